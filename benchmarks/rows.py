"""What the benchmarks share: the sizes, the engine rows (read from the fast-path registry) and how a row's model is
built, so the timing modules, count_ops and profile_step all measure the same thing.

The rows are the reference path, then one registry path added per row in the registry's order (each row keeps the
paths before it, less those a later path replaces, and less those that cannot run for this model on this device:
asked for alone, the engine refuses them), then the rival (the reference networks under torch.compile in bf16 and
channels-last), and ``auto`` (no switch: what ``python -m fastp2p.train`` runs on the device).
"""

import contextlib
import dataclasses
import io
import os
import platform
import subprocess
import tempfile
import time
from unittest import mock

import torch

from fastp2p.data.builtin import builtin_dataroot
from fastp2p.engine import prepare_model, resolve_engine, runtime_for
from fastp2p.engine.registry import bench_rows
from fastp2p.errors import UserError
from fastp2p.models import create_model
from fastp2p.options import parse_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
PATH_ROWS = bench_rows()  # (row name, FastPath), in row order
COMPILE_ROWS = {"compile": "default", "compile_reduce_overhead": "reduce-overhead",
                "compile_max_autotune": "max-autotune"}
ROW_NAMES = ("reference", *(row for row, _ in PATH_ROWS), *COMPILE_ROWS, "auto")
MODELS = ("pix2pix", "cycle_gan")


@dataclasses.dataclass(frozen=True)
class Size:
    """A preset: the networks' flags per model, the batch sizes per model, CycleGAN's image pool."""

    name: str
    model_flags: dict
    batch_sizes: dict
    pool_size: int | None
    workers: int | None  # loader workers (None: the trainer's default)
    about: str


SIZES = {
    "paper": Size("paper", {"pix2pix": [], "cycle_gan": []}, {"pix2pix": (1, 16, 64), "cycle_gan": (1, 4)}, None, None,
                  "the paper's 256x256 (unet_256, resnet_9blocks, ngf/ndf 64)"),
    "small": Size("small", {"pix2pix": ["--netG", "unet_128", "--ngf", "16", "--ndf", "16", "--crop_size", "128",
                                        "--load_size", "143"],
                            "cycle_gan": ["--netG", "resnet_6blocks", "--ngf", "16", "--ndf", "16", "--crop_size", "64",
                                          "--load_size", "72"]},
                  {"pix2pix": (1, 4), "cycle_gan": (1, 4)}, 4, 0,
                  "small nets and crops for the CPU (unet_128@128, resnet_6blocks@64, ngf/ndf 16, CycleGAN pool 4; "
                  "loaders without worker processes, whose start would be most of the run)"),
}

# Train GFLOP per image (one A/B pair) at the paper's size with the models' defaults, counted with torch's
# FlopCounterMode over one training iteration: G and D, forward and backward.
GFLOP_PER_IMAGE = {("pix2pix", "unet_256", 256): 86.94, ("cycle_gan", "resnet_9blocks", 256): 1879.2}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # NVIDIA's nominal bf16 dense figure for both


def dataroot(aligned=True):
    """facades (aligned) or facades_unpaired where they sit beside the tree, else the built-in synthetic set (both
    layouts under one root, generated once in the temporary folder)."""
    root = os.path.normpath(os.path.join(SHARED_DATA, "facades" if aligned else "facades_unpaired"))
    if os.path.isdir(root):
        return root
    return builtin_dataroot(os.path.join(tempfile.gettempdir(), "fastp2p_bench_builtin"))


def model_flags(size, model, batch_size, device, seed=0, pool_size=None, dataroot=None):
    """The trainer's flags for ``model`` at ``size`` on ``device``."""
    flags = ["--model", model, "--batch_size", str(batch_size), "--seed", str(seed), "--name", "bench",
             "--gpu_ids", str(device.index or 0) if device.type == "cuda" else "-1", "--no_tensorboard",
             *size.model_flags[model]]
    pool = size.pool_size if pool_size is None else pool_size
    if model == "cycle_gan" and pool is not None:
        flags += ["--pool_size", str(pool)]
    if dataroot:
        flags += ["--dataroot", dataroot] + (["--num_threads", str(size.workers)] if size.workers is not None else [])
    return flags


def switches(on):
    """Every benchmark path's flags: those in ``on`` (path names) on, the others off."""
    flags = []
    for _, path in PATH_ROWS:
        flags += path.on_flags() if path.name in on else [f"--{path.name}", str(path.off_flag)]
    return flags


def blocked(path, base_flags, device):
    """Why the engine refuses ``path`` alone (with what it needs) for these flags on ``device``, or None. The rows
    time compiled kernels: a path that would run in Triton's interpreter (a test mode) counts as refused, and so does
    a path declared GPU-only (``Check.cpu``) on the CPU, where it would repeat the row before."""
    if device.type != "cuda" and path.check is not None and not path.check.cpu:
        return f"--{path.name} is declared GPU-only"
    needs = list(path.check.needs) if path.check else []
    with mock.patch.dict(os.environ):
        os.environ.pop("TRITON_INTERPRET", None)
        try:
            resolve_engine(parse_options(base_flags + switches({path.name}) + needs, is_train=True), device)
        except UserError as error:
            return str(error)
    return None


def row_flags(name, base_flags, device):
    """The engine flags of row ``name``: the reference, auto, a compile row or the cumulative paths up to it."""
    if name == "reference":
        return ["--reference"]
    if name == "auto":
        return []
    if name in COMPILE_ROWS:
        return switches({"amp", "channels_last"}) + ["--compile", COMPILE_ROWS[name]]
    names = [row for row, _ in PATH_ROWS]
    on, replaced = set(), set()
    for _, path in reversed(PATH_ROWS[:names.index(name) + 1]):  # latest first: what a later path replaces stays off
        if path.name not in replaced and blocked(path, base_flags, device) is None:
            on.add(path.name)
            replaced.update(path.replaces)
    return switches(on)


def row_blocker(name, base_flags, device):
    """Why row ``name`` does not run for these flags on ``device`` (its own path refused), or None."""
    path = dict(PATH_ROWS).get(name)
    return blocked(path, base_flags, device) if path else None


def build(argv, device, seed=0, **config_changes):
    """A model exactly as the trainer builds it, from ``seed``, with its training step; set-up printout kept quiet.
    ``config_changes`` replace fields of the engine config the flags resolve to."""
    opt = parse_options(argv, is_train=True)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        engine = dataclasses.replace(resolve_engine(opt, device), **config_changes)
        model = create_model(opt, runtime_for(engine, device))
        model.setup(opt)
        step = prepare_model(model, engine)
    return opt, model, engine, step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batches(opt, device, count=4):
    """``count`` fixed batches of uniform [-1, 1) images on the device, the loader's value range."""
    generator = torch.Generator().manual_seed(opt.seed)
    shape = (opt.batch_size, opt.input_nc, opt.crop_size, opt.crop_size)
    paths = [f"random_{i}.png" for i in range(opt.batch_size)]
    return [{"A": (torch.rand(shape, generator=generator) * 2 - 1).to(device),
             "B": (torch.rand(shape, generator=generator) * 2 - 1).to(device), "A_paths": paths, "B_paths": paths}
            for _ in range(count)]


def run_steps(step, batches, count, start=0):
    for i in range(start, start + count):
        step(batches[i % len(batches)])


def observed_flags(model, batch_size, small, device, seed=0):
    """The flags of ``model`` at the small or the paper size for count_ops and profile_step: no image pool, whose
    choices hang on values that they do not look at."""
    return model_flags(SIZES["small" if small else "paper"], model, batch_size, device, seed, pool_size=0)


def warmed_up(argv, device, seed=0, warmup=2, **config_changes):
    """(engine, steps) of the model ``argv`` builds, stepped ``warmup`` times (the optimizers' state made):
    ``steps(count)`` runs the next ``count`` steps and waits for them, for count_ops or profile_step to observe."""
    opt, _, engine, step = build(argv, device, seed, **config_changes)
    batches = random_batches(opt, device)
    run_steps(step, batches, warmup)
    sync(device)

    def steps(count):
        run_steps(step, batches, count, start=warmup)
        sync(device)
    return engine, steps


def forever(loader):
    """A loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def git_commit():
    """FASTP2P_COMMIT where the tree is a copy without .git (a lent GPU machine), else git's HEAD, marked where
    tracked files other than results (a run may be rewriting one) differ from it."""
    if os.environ.get("FASTP2P_COMMIT"):
        return os.environ["FASTP2P_COMMIT"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!benchmarks/results"], capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+local changes" if dirty.stdout.strip() else "") if head.returncode == 0 \
        else "unknown"


def environment(device):
    """Device, versions and commit: what every result carries."""
    cuda = device.type == "cuda"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()} CPU"
    return dict(device=name, device_type=device.type, torch=torch.__version__, triton=triton_version,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if cuda else None,
                python=platform.python_version(), cpu_threads=torch.get_num_threads(), commit=git_commit())


def copy_gbps(device):
    """Device-to-device copy bandwidth, bytes read + written: the roof of a memory-bound kernel."""
    src = torch.empty(2**30 if device.type == "cuda" else 2**22, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    sync(device)
    return 2 * src.numel() * 10 / (time.perf_counter() - start) / 1e9


def peak_tflops(device_name):
    return next((value for key, value in PEAK_TFLOPS.items() if key in device_name), None)
