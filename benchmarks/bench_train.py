"""End-to-end training throughput: the reference path, then one fast-path technique added per row.

All rows run in one process on the same device and the same data, each on a fresh model built from
the same seed through the trainer's own code (parse_options -> create_model -> setup -> prepare_model).
The model step is measured on a fixed set of random batches already on the device; the data-loading
share is measured apart, once per model and batch size, by feeding the fastest row's model from the
real loader (create_fast_loader) and timing the wait for each batch.

    python benchmarks/bench_train.py --out benchmarks/results                  # GPU: every row, < 8 min on an H100
    python benchmarks/bench_train.py --models pix2pix --batch_sizes 1 --rows reference cuda_graph
    python benchmarks/bench_train.py --device cpu --small --out benchmarks/results  # CPU, ~3 min

Rows (cumulative; --rows picks among them by name):
    GPU: reference, +amp (bf16), +channels_last, +fused_kernels, +fused_adam, +foreach_cast, +step_cast (which
         replaces --foreach_cast), +batch_passes (CycleGAN, and any model with per-sample norms), +cuda_graph,
         +cudnn_search_all (the default fast path), +two_streams (CycleGAN), +overlap_optimizer and +triton_adam
         (the three off by default until measured; a row leaves off what it replaces or cannot run beside:
         +overlap_optimizer --two_streams, +triton_adam --fused_adam and --overlap_optimizer), and apart,
         the reference networks under torch.compile in bf16 + channels-last (CUDA graphs off: --compile brings its
         own): compile (its default mode), compile_reduce_overhead and, only when asked for, compile_max_autotune
         (long to compile).
    CPU: reference, +channels_last, +fused_adam, +batch_passes (CycleGAN), +amp (bf16), +foreach_cast,
         +step_cast, +overlap_optimizer; fused kernels would run in Triton's interpreter and CUDA graphs need a
         GPU, so those rows are GPU-only.
    auto: no switch given, what `python -m fastp2p.train` runs on the device (default on the CPU only:
         on a GPU it is the +cudnn_search_all row).

Timing: warm-up iterations are not timed (cudnn.benchmark, the CUDA-graph capture after 3 eager steps
once CycleGAN's image pools are full, torch.compile); then --repeats runs of N iterations, each between
two device synchronizations; N is sized from the warm-up so that a run takes --repeat_seconds unless
--iters is given. Reported: the median over repeats. MFU = images/s x train GFLOP/image / peak, with
the FLOP counts of GFLOP_PER_IMAGE below and a peak of 989 TFLOP/s bf16 dense on H100/H200, NVIDIA's nominal
figure (result files made before this default used 800: their MFU reads 1.24x higher).

Budget: the compile rows run last, after every other row of every configuration, and no row starts
after --budget_s (390 s on a GPU): a full H100 run stays under 8 minutes, the rest recorded as skipped.
Writes <out>/train_<device>_<yyyymmdd>.json and .md after every row, so an interrupted run keeps
what it measured. A row that fails (out of memory, a compile error) is recorded with its error.
"""

import argparse
import contextlib
import dataclasses
import datetime
import gc
import io
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import torch

from fastp2p.data.builtin import builtin_dataroot
from fastp2p.data.select import create_fast_loader
from fastp2p.engine import prepare_model, resolve_engine, runtime_for
from fastp2p.engine.passes import PER_SAMPLE_NORMS
from fastp2p.models import create_model
from fastp2p.options import parse_options

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))

GPU_CHAIN = ("amp", "channels_last", "fused_kernels", "fused_adam", "foreach_cast", "step_cast", "batch_passes",
             "cuda_graph", "cudnn_search_all", "two_streams", "overlap_optimizer", "triton_adam")
CPU_CHAIN = ("channels_last", "fused_adam", "batch_passes", "amp", "foreach_cast", "step_cast", "overlap_optimizer")
TECHNIQUES = ("amp", "channels_last", "fused_kernels", "fused_adam", "foreach_cast", "step_cast", "batch_passes",
              "cuda_graph", "cudnn_search_all", "two_streams", "overlap_optimizer", "triton_adam")
# an earlier technique left off from the row of a later one that does its work its own way (the step copies, the
# Triton Adam's step) or cannot run beside it (the overlapped optimizer's own side stream, its per-parameter steps)
LEFT_OFF_BY = {"foreach_cast": "step_cast", "two_streams": "overlap_optimizer", "fused_adam": "triton_adam",
               "overlap_optimizer": "triton_adam"}
# the rival a user would try first: the reference networks under torch.compile, bf16 channels-last, per mode
COMPILE_ROWS = {"compile": "default", "compile_reduce_overhead": "reduce-overhead",
                "compile_max_autotune": "max-autotune"}
ROW_NAMES = ("reference",) + TECHNIQUES + tuple(COMPILE_ROWS) + ("auto",)

# Train GFLOP per image (one A/B pair) at 256^2 with the models' defaults, counted with torch's
# FlopCounterMode over one training iteration: G and D, forward and backward.
GFLOP_PER_IMAGE = {("pix2pix", "unet_256", 256): 86.94, ("cycle_gan", "resnet_9blocks", 256): 1879.2}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}  # NVIDIA's nominal bf16 dense figure for both

# --small: sizes that run in seconds on a CPU
SMALL_FLAGS = {"pix2pix": ["--netG", "unet_128", "--ngf", "16", "--ndf", "16", "--crop_size", "128",
                           "--load_size", "143"],
               "cycle_gan": ["--netG", "resnet_6blocks", "--ngf", "16", "--ndf", "16", "--crop_size", "64",
                             "--load_size", "72"]}
DEFAULT_BATCH_SIZES = {"pix2pix": (1, 16, 64), "cycle_gan": (1, 4)}
SMALL_BATCH_SIZES = (1, 4)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="small nets and crops (unet_128@128, resnet_6blocks@64, "
                   "ngf/ndf 16), batch sizes 1 and 4, CycleGAN --pool_size 4: the CPU mode")
    p.add_argument("--models", nargs="+", default=["pix2pix", "cycle_gan"], choices=["pix2pix", "cycle_gan"])
    p.add_argument("--batch_sizes", type=int, nargs="+", default=None,
                   help="for every model (default: pix2pix 1 16 64, cycle_gan 1 4; --small: 1 4)")
    p.add_argument("--rows", nargs="+", default=None, choices=ROW_NAMES,
                   help="rows to run (each keeps the techniques of the rows before it in the chain); default all "
                        "that run on the device")
    p.add_argument("--iters", type=int, default=None, help="timed iterations per repeat (default: sized by time)")
    p.add_argument("--repeat_seconds", type=float, default=None,
                   help="target length of one timed repeat when --iters is not given (default 0.5 GPU, 0.6 CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per row (default 5 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed iterations per row (default 10 GPU, 3 CPU; CycleGAN at least pool_size/bs + 5)")
    p.add_argument("--pool_size", type=int, default=None, help="CycleGAN image pool (default 50; --small: 4)")
    p.add_argument("--dataroot", default=os.path.join(SHARED, "facades"), help="aligned set for pix2pix's loader row")
    p.add_argument("--unaligned_root", default=os.path.join(SHARED, "facades_unpaired"),
                   help="unaligned set for CycleGAN's loader row")
    p.add_argument("--data_loader", default="auto", choices=["auto", "torch", "dali", "gpu_cache"],
                   help="loader for the data-loading share (auto: the GPU cache on a GPU, the torch loader on CPU)")
    p.add_argument("--no_loader", action="store_true", help="skip the data-loading share measurement")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="peak for MFU (default 989 on H100/H200, bf16 dense; none elsewhere: no MFU)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: torch's on a GPU, 1 on the CPU, where on a shared few-core box "
                        "more threads mostly spin waiting for each other and the timings become noise)")
    p.add_argument("--budget_s", type=float, default=None,
                   help="start no row after this many seconds; later rows are recorded as skipped (default 390 on "
                        "a GPU, keeping a full run under 8 minutes; none on the CPU)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("iters", "repeats", "warmup", "pool_size"):
        value = getattr(args, name)
        if value is not None and value < (0 if name in ("warmup", "pool_size") else 1):
            p.error(f"--{name} must be {'>= 0' if name in ('warmup', 'pool_size') else '>= 1'}, got {value}")
    if args.batch_sizes and min(args.batch_sizes) < 1:
        p.error("--batch_sizes must be positive")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available here; use --device cpu --small")
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    args.device = device
    cuda = device.type == "cuda"
    chain = GPU_CHAIN if cuda else CPU_CHAIN
    runnable = ("reference",) + chain + (tuple(COMPILE_ROWS) if cuda else ()) + ("auto",)
    asked = args.rows or (runnable if not cuda else
                          [name for name in runnable if name not in ("auto", "compile_max_autotune")])
    args.rows = [name for name in runnable if name in asked]
    if not args.rows:
        p.error(f"none of the rows asked for runs on {device.type}; rows here: {', '.join(runnable)}")
    args.chain = chain
    if args.budget_s is None and cuda:
        args.budget_s = 390.0
    args.repeat_seconds = args.repeat_seconds or (0.5 if cuda else 0.6)
    args.repeats = args.repeats or (5 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 3)
    if args.pool_size is None and args.small:
        args.pool_size = 4
    return args


def row_flags(name, chain, skipped=frozenset()):
    """Engine switches of a row: the chain's techniques up to ``name`` on, every other one off, and those in
    ``skipped`` (see inapplicable()) off too."""
    if name == "reference":
        return ["--reference"]
    if name == "auto":
        return []
    if name in COMPILE_ROWS:
        on = {"amp", "channels_last"}
    else:  # latest first, so a technique left off by a later one does not leave off what it would replace
        on = set()
        for technique in reversed(chain[:chain.index(name) + 1]):
            if LEFT_OFF_BY.get(technique) not in on:
                on.add(technique)
    on -= skipped
    flags = ["--amp", "bf16" if "amp" in on else "off", "--adam_kernel", "triton" if "triton_adam" in on else "torch"]
    for technique in TECHNIQUES:
        if technique not in ("amp", "triton_adam"):  # the on/off switches
            flags += [f"--{technique}", "on" if technique in on else "off"]
    return flags + (["--compile", COMPILE_ROWS[name]] if name in COMPILE_ROWS else [])


def inapplicable(args, model_name):
    """The techniques that do not apply to the model, whose rows are skipped (each would repeat the row before):
    --batch_passes where the norms are not per-sample (pix2pix's BatchNorm: batching would change the math),
    --two_streams but for CycleGAN (no other model has two independent updates)."""
    skipped = set()
    if parse_options(model_flags(args, model_name, 1), is_train=True).norm not in PER_SAMPLE_NORMS:
        skipped.add("batch_passes")
    if model_name != "cycle_gan":
        skipped.add("two_streams")
    return frozenset(skipped)


def model_row_flags(args, model_name, name):
    return row_flags(name, args.chain, inapplicable(args, model_name))


def display_name(name):
    """'+technique' for the cumulative rows, the plain name for the others."""
    return name if name in ("reference", "auto", *COMPILE_ROWS) else "+" + name


def model_flags(args, model, batch_size, dataroot=None):
    flags = ["--model", model, "--batch_size", str(batch_size), "--seed", str(args.seed), "--name", "bench_train",
             "--gpu_ids", str(args.device.index) if args.device.type == "cuda" else "-1", "--no_tensorboard"]
    if args.small:
        flags += SMALL_FLAGS[model]
    if model == "cycle_gan" and args.pool_size is not None:
        flags += ["--pool_size", str(args.pool_size)]
    if dataroot is not None:
        flags += ["--dataroot", dataroot]
    return flags


def build(argv, device, seed, **config_changes):
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


def run_steps(model, step, batches, count, start=0):
    for i in range(start, start + count):
        step(batches[i % len(batches)])


def warmup_count(args, opt):
    """Enough for cudnn.benchmark and the graph capture; for CycleGAN also to fill the image pools."""
    pool = opt.pool_size if opt.model == "cycle_gan" else 0
    return max(args.warmup, math.ceil(pool / opt.batch_size) + 5 if pool else 0)


def measure(args, opt, model, step, batches):
    """Warm up, size N, then the median of --repeats synchronized runs of N iterations."""
    device = args.device
    start = time.perf_counter()
    warmup = warmup_count(args, opt)
    run_steps(model, step, batches, warmup)
    sync(device)
    probe = 3
    t0 = time.perf_counter()
    run_steps(model, step, batches, probe, warmup)
    sync(device)
    per_iter = (time.perf_counter() - t0) / probe
    warmup_s = time.perf_counter() - start
    iters = args.iters or min(2000, max(5, math.ceil(args.repeat_seconds / per_iter)))
    rates = []
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        run_steps(model, step, batches, iters)
        sync(device)
        rates.append(iters / (time.perf_counter() - t0))
    return dict(warmup_iters=warmup + probe, warmup_s=round(warmup_s, 2), iters=iters, repeats=args.repeats,
                it_per_s_repeats=[round(r, 3) for r in rates], it_per_s=statistics.median(rates))


def loader_root(args, model):
    """The real set for ``model``, or the built-in synthetic one (generated once) when it is absent here."""
    root = args.dataroot if model == "pix2pix" else args.unaligned_root
    if os.path.isdir(root):
        return root, None
    fallback = builtin_dataroot(os.path.join(tempfile.gettempdir(), "fastp2p_bench_builtin"))
    return fallback, f"{root} not found: the built-in synthetic set (128^2 PNG, resized to the crop) was used"


def measure_loader(args, model_name, batch_size, row_name, model_it_per_s):
    """Images/s of the fastest row fed by the real loader, and the share of time spent waiting for batches."""
    root, note = loader_root(args, model_name)
    argv = model_flags(args, model_name, batch_size, root) + model_row_flags(args, model_name, row_name)
    opt, model, _, step = build(argv, args.device, args.seed)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        loader = create_fast_loader(opt, args.data_loader)
    setup_s = time.perf_counter() - start

    def forever():
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    stream = forever()
    for _ in range(warmup_count(args, opt) + 3):
        step(next(stream))
    iters = max(5, args.iters or 0, round(model_it_per_s * args.repeat_seconds * 2))
    wait = 0.0
    sync(args.device)
    t0 = time.perf_counter()
    for _ in range(iters):
        before = time.perf_counter()
        data = next(stream)
        wait += time.perf_counter() - before
        step(data)
    sync(args.device)
    total = time.perf_counter() - t0
    losses = model.get_current_losses()
    return dict(row=row_name, data_loader=args.data_loader, chosen=type(loader).__name__,
                dataroot=root, setup_s=round(setup_s, 2), iters=iters,
                images_per_s=round(iters * batch_size / total, 2), data_wait_share=round(wait / total, 4),
                losses_finite=all(math.isfinite(v) for v in losses.values()), note=note)


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def bench_row(args, model_name, batch_size, name, reference_rate, batches):
    row = dict(model=model_name, batch_size=batch_size, row=display_name(name),
               flags=model_row_flags(args, model_name, name), engine=None, error=None)
    device = args.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = None
    try:
        argv = model_flags(args, model_name, batch_size) + row["flags"]
        opt, model, engine, step = build(argv, device, args.seed)
        row["engine"] = engine.describe()
        if batches.get("data") is None:
            batches["data"] = random_batches(opt, device)
        row.update(measure(args, opt, model, step, batches["data"]))
        losses = model.get_current_losses()
        row["losses"] = {k: round(v, 5) for k, v in losses.items()}
        row["losses_finite"] = all(math.isfinite(v) for v in losses.values())
        row["images_per_s"] = row["it_per_s"] * batch_size
        row["vs_reference"] = 1.0 if name == "reference" else (row["images_per_s"] / reference_rate
                                                                if reference_rate else None)
        gflop = GFLOP_PER_IMAGE.get((model_name, opt.netG, opt.crop_size)) if not args.small else None
        row["gflop_per_image"] = gflop
        row["mfu"] = row["images_per_s"] * gflop / (args.peak_tflops * 1e3) if gflop and args.peak_tflops else None
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except Exception as e:  # noqa: BLE001 - a failing row (OOM, compile error) is a result, not the end
        row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400] if str(e).strip() else ''}"
        traceback.print_exc()
    finally:
        del model
        if name in COMPILE_ROWS:
            torch._dynamo.reset()
        free(device)
    return row


def git_commit():
    """FASTP2P_COMMIT where the tree is a copy without .git (a lent GPU machine), else git's HEAD."""
    if os.environ.get("FASTP2P_COMMIT"):
        return os.environ["FASTP2P_COMMIT"], None
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=HERE)
    except OSError:
        return "unknown", None
    if head.returncode != 0:
        return "unknown", None
    return head.stdout.strip(), bool(dirty.stdout.strip())


def environment(args):
    device = args.device
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else f"{platform.processor() or platform.machine()} CPU"
    if args.peak_tflops is None and cuda:
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit, dirty = git_commit()
    return dict(
        device=name, device_type=device.type, cpu_threads=torch.get_num_threads(), python=platform.python_version(),
        torch=torch.__version__, triton=triton_version, cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None, commit=commit, dirty=dirty,
        command=" ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), small=args.small,
        pool_size=args.pool_size, repeats=args.repeats, iters=args.iters, repeat_seconds=args.repeat_seconds,
        warmup=args.warmup, budget_s=args.budget_s, peak_tflops=args.peak_tflops,
        peak_note="MFU = images/s x train GFLOP/image (FlopCounterMode, bench_train.py) / peak; peak = 989 TFLOP/s "
                  "bf16 dense on H100/H200, NVIDIA's nominal figure. The fp32 rows are measured against the same "
                  "bf16 peak. No MFU where the FLOP count or the peak is unknown.",
        data_note="model rows: 4 fixed random batches on the device (peak memory includes them: 6 MiB x batch "
                  "size); loader rows: the real loader feeding a fresh model of the fastest row, warmed up as "
                  "the rows are, data_wait_share = time in next(loader) / wall time",
    )


def fmt(value, spec):
    return "" if value is None else format(value, spec)


def markdown(meta, rows):
    lines = [f"# fastp2p training throughput on {meta['device']} ({meta['date'][:10]})", "",
             f"torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}, "
             f"{meta['cpu_threads']} CPU threads; commit `{meta['commit'][:12]}`"
             f"{' (with local changes)' if meta['dirty'] else ''}", "", f"`{meta['command']}`", "",
             f"Median of {meta['repeats']} repeats after warm-up. {meta['peak_note']}", "",
             "| model | bs | row | engine | it/s | img/s | x ref | MFU | peak mem GiB | iters x repeats | "
             "warm-up s | losses | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        losses = "" if "losses_finite" not in r else ("finite" if r["losses_finite"] else "NOT FINITE")
        runs = f"{r['iters']} x {r['repeats']}" if "iters" in r else ""
        mfu = "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['row']} | {r['engine'] or ''} | "
                     f"{fmt(r.get('it_per_s'), '.2f')} | {fmt(r.get('images_per_s'), '.1f')} | "
                     f"{fmt(r.get('vs_reference'), '.2f')} | {mfu} | {fmt(r.get('peak_mem_gib'), '.2f')} | {runs} | "
                     f"{fmt(r.get('warmup_s'), '.1f')} | {losses} | {r['error'] or ''} |")
    loaders = [r for r in rows if r.get("loader")]
    if loaders:
        lines += ["", "Data-loading share (the real loader feeding the row named):", "",
                  "| model | bs | row | loader | img/s with loader | img/s preloaded | data wait | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in loaders:
            ld = r["loader"]
            if "error" in ld:
                lines.append(f"| {r['model']} | {r['batch_size']} | {r['row']} | | | | | {ld['error']} |")
                continue
            lines.append(f"| {r['model']} | {r['batch_size']} | {r['row']} | {ld['chosen']} | "
                         f"{ld['images_per_s']:.1f} | {fmt(r.get('images_per_s'), '.1f')} | "
                         f"{100 * ld['data_wait_share']:.1f}% | {ld['note'] or ''} |")
    return "\n".join(lines) + "\n"


def write(stem, meta, rows):
    """JSON and markdown of everything so far; written after each row (a timeout keeps what was measured)."""
    with open(stem + ".json.tmp", "w") as f:
        json.dump(dict(meta, rows=rows), f, indent=1)
    os.replace(stem + ".json.tmp", stem + ".json")
    with open(stem + ".md", "w") as f:
        f.write(markdown(meta, rows))


def log(start, text):
    print(f"[{time.perf_counter() - start:6.1f}s] {text}", flush=True)


def run_config(args, model_name, batch_size, names, reference_rates, rows, save, start):
    """The rows ``names`` for one model and batch size; then, unless skipped, the loader share of the fastest."""
    key, batches, fastest = (model_name, batch_size), {}, None
    for name in names:
        if name in inapplicable(args, model_name):
            log(start, f"{model_name} bs{batch_size} {display_name(name):>15}: does not apply, skipped")
            continue
        if args.budget_s and time.perf_counter() - start > args.budget_s:
            row = dict(model=model_name, batch_size=batch_size, row=display_name(name),
                       flags=model_row_flags(args, model_name, name), engine=None,
                       error=f"skipped: --budget_s {args.budget_s:g} reached before this row")
        else:
            if name in COMPILE_ROWS:
                log(start, f"{model_name} bs{batch_size} {name:>15}: compiling and warming up")
            row = bench_row(args, model_name, batch_size, name, reference_rates.get(key), batches)
        if name == "reference" and row["error"] is None:
            reference_rates[key] = row["images_per_s"]
        if row["error"] is None and (fastest is None or row["images_per_s"] > fastest["images_per_s"]):
            fastest = row
        rows.append(row)
        save()
        log(start, f"{model_name} bs{batch_size} {row['row']:>15}: " + (
            f"{row['it_per_s']:.2f} it/s, {row['images_per_s']:.1f} img/s, x{fmt(row['vs_reference'], '.2f')}"
            if row["error"] is None else f"FAILED {row['error']}"))
    del batches
    free(args.device)
    if fastest is None or args.no_loader or set(names) & set(COMPILE_ROWS) or (
            args.budget_s and time.perf_counter() - start > args.budget_s):
        return
    try:
        fastest["loader"] = measure_loader(args, model_name, batch_size, fastest["row"].lstrip("+"),
                                           fastest["it_per_s"])
        log(start, f"{model_name} bs{batch_size} with loader ({fastest['loader']['chosen']}): "
                   f"{fastest['loader']['images_per_s']:.1f} img/s, "
                   f"data wait {100 * fastest['loader']['data_wait_share']:.1f}%")
    except Exception as e:  # noqa: BLE001 - recorded like a failed row
        fastest["loader"] = {"error": f"{type(e).__name__}: {str(e).strip()[:400]}"}
        traceback.print_exc()
    free(args.device)
    save()


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    if args.threads or device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # as the trainer (default --preprocess)
    meta = environment(args)
    os.makedirs(args.out, exist_ok=True)
    tag = "cpu" if device.type == "cpu" else re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
    stem = os.path.join(args.out, f"train_{tag}_{datetime.date.today():%Y%m%d}")
    print(f"bench_train: {meta['device']}, rows {' '.join(args.rows)}; writing {stem}.json/.md", flush=True)
    configs = [(model_name, batch_size) for model_name in args.models for batch_size in
               args.batch_sizes or (SMALL_BATCH_SIZES if args.small else DEFAULT_BATCH_SIZES[model_name])]
    rows, reference_rates = [], {}

    def ordered():
        return sorted(rows, key=lambda r: (configs.index((r["model"], r["batch_size"])),
                                           args.rows.index(r["row"].lstrip("+"))))

    def save():
        write(stem, meta, ordered())

    start = time.perf_counter()
    # compile rows last: their compile time is the least predictable part of the budget
    for phase in ([name for name in args.rows if name not in COMPILE_ROWS],
                  [name for name in args.rows if name in COMPILE_ROWS]):
        for model_name, batch_size in configs:
            if phase:
                run_config(args, model_name, batch_size, phase, reference_rates, rows, save, start)
    meta["total_s"] = round(time.perf_counter() - start, 1)
    save()
    print(markdown(meta, ordered()))
    print(f"wrote {stem}.json and {stem}.md in {meta['total_s']} s", flush=True)
    return 0 if all(r["error"] is None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
