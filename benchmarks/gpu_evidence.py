"""The GPU evidence run: one command that fits a lent machine's 15 minutes (its start included) with room to rerun.
It installs this tree in place (no download; torch and Triton are the machine's), then measures, most important
first:

0. doctor: python -m fastp2p.doctor --all --json on pix2pix and CycleGAN at 256x256 batch 1, so the first GPU
   that runs this says which fast paths work there (and what each buys), whatever happens after;
1. cuda_tests: the CUDA tests of the engine, the kernels and inference (paths that have not run on a GPU yet);
2. goals: the reference row and the fast path's rows (+cuda_graph with cuDNN's default 10 algorithms, then
   +cudnn_search_all, the default, then +two_streams for CycleGAN, +overlap_optimizer and +triton_adam) of the
   four goal configurations: pix2pix bs1 and bs16, CycleGAN bs1 and bs4;
3. profile: kernel counts and device time per category (convolutions, norms, optimizer, casts...) per iteration
   of the same four configurations, eager (the kernels a graph replays);
4. adam: the optimizer step alone at pix2pix's 57.2M and CycleGAN's 28.3M parameters against the copy roof;
5. norms_bs1: each of the ResNet's fused InstanceNorm layers at batch 1, channels-last against NCHW and torch's,
   eager and replayed from a graph (where a channels-last norm was found launch-bound);
6. rival: the reference networks under torch.compile(mode="reduce-overhead"), bf16 channels-last, in what is left.
The measuring stages are pytest-benchmark runs of benchmarks/ (one --benchmark-json file each, written when its run
ends: a run stopped at its stage's limit leaves its rows in the log only), unpaired: a lent GPU runs nothing else,
and pairing would double each row's rounds. Then goals.md (report.py --goals): each goal
configuration against its targets, the reference and the rival, and each switch that `auto` leaves off until
measured against the row without it.

Each stage runs under its own time limit (together under 9 minutes on an H200), and a stage that fails or runs out
of time costs only its share. Everything goes to --out, with env.json (device, driver, versions, the commit passed
in: a lent machine's copy of the tree has no git history) and summary.txt; --archive packs it into one file (the
device tool brings back a few files only).

    FASTP2P_COMMIT=$SHA PYTHONUNBUFFERED=1 python3 benchmarks/gpu_evidence.py --out /tmp/evidence \\
        --archive "$OUT/evidence.tar.gz"
    python benchmarks/gpu_evidence.py --dry_run --out /tmp/evidence     # CPU: every stage, smallest sizes (CI)
"""

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_CONFIGS = {"pix2pix": ("1", "16"), "cycle_gan": ("1", "4")}
# the CUDA tests in two runs, the paths that have never run on a GPU first (the engine's streams, graphs and step
# copies, the Triton convs and Adam, inference, and torchvision's decode, absent from the CPU's CI), then the kernels
# measured on one before; the sm_90 compile checks ("compiled") are left to the CPU's CI
CUDA_TESTS = (["tests/engine", "tests/kernels/test_conv.py", "tests/kernels/test_adam.py",
               "tests/test_inference.py",
               "tests/test_dali_loader.py::test_torchvision_decode_of_16_bit_pngs_matches_the_torch_path"],
              ["tests/kernels", "--deselect", "tests/kernels/test_conv.py", "--deselect", "tests/kernels/test_adam.py"])
GOAL_ROWS = ("reference", "cuda_graph", "cudnn_search_all", "two_streams", "overlap_optimizer", "triton_adam")
SMALL = ["--fastp2p-size", "small", "--fastp2p-rounds", "1"]  # the dry run's benchmarks
TINY_DOCTOR = ["--gpu_ids", "-1", "--netG", "unet_128", "--load_size", "128", "--crop_size", "128", "--ngf", "4",
               "--ndf", "4", "--no_timing", "--paths", "fused_adam"]


def stages(args):
    """(name, seconds, [commands]) in the order they run. --dry_run runs the same stages, but for the install and
    the rival, at the CPU's smallest: one goal configuration, the small size, the CUDA tests collected, not run."""
    python, out = sys.executable, args.out

    def either(real, dry):
        return dry if args.dry_run else real

    def benchmark(module, name, *options):
        """A pytest-benchmark run of benchmarks/``module`` (its tests, selected) writing ``name`` in --out."""
        return [python, "-m", "pytest", f"benchmarks/{module}", "-q", "-p", "no:cacheprovider", "--benchmark-only",
                "--fastp2p-unpaired", "--benchmark-json", os.path.join(out, name), *either([], SMALL), *options]

    def training(stage, train_rows):
        """test_train's ``train_rows`` of each goal configuration, 3 rounds, in <stage>_<model>.json."""
        return [benchmark("test_train.py::test_train", f"{stage}_{model}.json", *either(["--fastp2p-rounds", "3"], []),
                          "--fastp2p-models", model, "--fastp2p-batch-sizes", *sizes, "--fastp2p-rows", *train_rows)
                for model, sizes in configs.items()]

    configs = either(GOAL_CONFIGS, {"pix2pix": ("1",)})
    table = [
        ("install", 30, either([[python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e",
                                 ROOT]], [])),
        ("doctor", 100, [[python, "-m", "fastp2p.doctor", "--model", model,
                          *either(["--batch_size", "1", "--all", "--repeats", "3"], TINY_DOCTOR), "--json",
                          os.path.join(out, f"doctor_{model}.json")] for model in configs]),
        ("cuda_tests", 140, [[python, "-m", "pytest", "-p", "no:cacheprovider", *either(
            ["-v", "--timeout", "120", "--durations", "15"], ["--collect-only", "-q"]), *tests, "-k", "not compiled"]
            for tests in CUDA_TESTS]),
        ("goals", 110, training("goals", either(GOAL_ROWS, ("reference", "step_cast")))),
        ("profile", 50, [[python, "-m", "benchmarks.profile_step",
                          *either(["--steps", "3", "--warmup", "6"], ["--small", "--steps", "1", "--warmup", "1"]),
                          "--config", *(f"{model}:{size}:{either('batch_passes', 'reference')}"
                                        for model, sizes in configs.items() for size in sizes),
                          "--out", os.path.join(out, "profile")]]),
        ("adam", 30, [benchmark("test_optimizer.py", "adam.json", *either([], ["--fastp2p-models", "pix2pix"]))]),
        ("norms_bs1", 20, [benchmark("test_kernels.py", "norms_bs1.json", "-k",
                                     either("norm_act and resnet_9blocks and bfloat16 and not b16", "norm_act"))]),
        ("rival", 30, either(training("rival", ["compile_reduce_overhead"]), [])),
    ]
    return [(name, either(seconds, 120), commands) for name, seconds, commands in table if commands]


def run_stage(name, seconds, commands, out):
    """Run ``commands`` one after the other within ``seconds`` in all, their output in <name>.log; a command still
    running at the limit is stopped with its whole process group. Returns the stage's summary line."""
    deadline = time.monotonic() + seconds
    codes = []
    with open(os.path.join(out, f"{name}.log"), "w") as log:
        for command in commands:
            left = deadline - time.monotonic()
            if left <= 1:
                codes.append("not started (time)")
                continue
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                codes.append(process.wait(timeout=left))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                codes.append("stopped at the limit")
    spent = seconds - max(0.0, deadline - time.monotonic())
    return f"{name}: {codes} after {spent:.0f} s (limit {seconds} s)"


def environment(args):
    """Device, driver and versions, and the tree's commit (given, since a copy of the tree has no git history)."""
    import torch

    info = dict(commit=args.commit, python=platform.python_version(), torch=torch.__version__,
                cuda=torch.version.cuda, dry_run=args.dry_run, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if torch.cuda.is_available():
        info.update(device=torch.cuda.get_device_name(0), cudnn=torch.backends.cudnn.version())
        smi = shutil.which("nvidia-smi")
        if smi:
            query = [smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"]
            info["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True).stdout.strip()
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for every log and result")
    p.add_argument("--archive", default=None, help="also pack --out into this .tar.gz")
    p.add_argument("--commit", default=os.environ.get("FASTP2P_COMMIT", "unknown"))
    p.add_argument("--dry_run", action="store_true",
                   help="on the CPU: every stage at its smallest (the tests collected, not run), so the script "
                        "cannot rot between GPU loans")
    p.add_argument("--stages", nargs="+", default=None, help="run only these stages (by name)")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "env.json"), "w") as f:
        json.dump(environment(args), f, indent=1)
    lines = []
    for name, seconds, commands in stages(args):
        if args.stages and name not in args.stages:
            continue
        lines.append(run_stage(name, seconds, commands, args.out))
        print(lines[-1], flush=True)
        with open(os.path.join(args.out, "summary.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    verdicts = report.goals(args.out)  # read from the rows just written; printed for the device's log tail
    with open(os.path.join(args.out, "goals.md"), "w") as f:
        f.write(verdicts)
    print(verdicts, end="", flush=True)
    if args.archive:
        with tarfile.open(args.archive, "w:gz") as archive:
            archive.add(args.out, arcname=os.path.basename(os.path.normpath(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
