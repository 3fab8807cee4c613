"""Images/s of each data loader: torch (PIL + DataLoader workers), DALI, the GPU cache, torchvision decode.

Aligned (facades, A|B JPEGs) and unaligned (facades_unpaired) sets, bs 1 and 16, 256^2 crops from 286
loads (the reference's training defaults). Loader construction (the GPU cache's one-time fill, DALI's
pipeline build, worker start) is reported apart as setup_s; the first --warmup batches are not timed;
the clock stops after a device synchronise. One image = one A and one B crop (one pair).

    python benchmarks/bench_loader.py                      # CPU here; on a GPU machine the same command
    python benchmarks/bench_loader.py --batches 200 --warmup 20

Writes benchmarks/results/loaders_<device>_<date>.{json,md}. Loaders that cannot run here (DALI not
installed, torchvision missing or without CUDA) are listed with the reason instead of a number.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import torch

from fastp2p.data import create_dataset
from fastp2p.data.dali_loader import DALILoader, dali_available
from fastp2p.data.gpu_cache import GPUCacheLoader
from fastp2p.data.torchvision_decode import TorchvisionDecodeLoader, torchvision_available

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data"))
LOADERS = ("torch", "dali", "gpu_cache", "torchvision")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataroot", default=os.path.join(SHARED, "facades"), help="aligned set (A|B files in train/)")
    p.add_argument("--unaligned_root", default=os.path.join(SHARED, "facades_unpaired"), help="trainA/ trainB/")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--batches", type=int, default=4, help="timed batches per row")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first")
    p.add_argument("--num_threads", type=int, default=os.cpu_count(), help="torch loader workers; DALI threads")
    p.add_argument("--intra_op_threads", type=int, default=1,
                   help="torch.set_num_threads in the timing process: its batch ops are small, and on a shared CPU "
                        "more threads mostly wait for each other")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--loaders", nargs="+", default=list(LOADERS), choices=LOADERS)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    return p.parse_args(argv)


def make_opt(args, dataroot, mode, batch_size):
    return argparse.Namespace(
        dataroot=dataroot, phase="train", dataset_mode=mode, direction="AtoB", input_nc=3, output_nc=3,
        serial_batches=False, num_threads=args.num_threads, batch_size=batch_size, load_size=286, crop_size=256,
        max_dataset_size=float("inf"), preprocess="resize_and_crop", no_flip=False, seed=0, device=args.device)


def build(kind, opt, device):
    """The loader, or the reason it cannot run here."""
    if kind == "torch":
        return create_dataset(opt)
    if kind == "gpu_cache":
        return GPUCacheLoader(opt, device)
    if kind == "dali":
        if not dali_available():
            return "DALI not installed"
        return DALILoader(opt, device_id=(device.index or 0) if device.type == "cuda" else None,
                          num_threads=opt.num_threads)
    if not torchvision_available():
        return "torchvision not importable"
    if device.type != "cuda":
        return "needs CUDA (nvJPEG)"
    return TorchvisionDecodeLoader(opt, device)


def batches(loader):
    """Batches forever, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(loader, device, warmup, count):
    stream = batches(loader)
    for _ in range(warmup):
        next(stream)
    sync(device)
    start, images = time.perf_counter(), 0
    for _ in range(count):
        images += len(next(stream)["A"])
    sync(device)
    return images / (time.perf_counter() - start)


def versions():
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "nvidia-dali-cuda130", "pillow", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.intra_op_threads)
    rows = []
    sets = [("aligned", args.dataroot), ("unaligned", args.unaligned_root)]
    for mode, root in sets:
        for bs in args.batch_sizes:
            for kind in args.loaders:
                opt = make_opt(args, root, mode, bs)
                start = time.perf_counter()
                loader = build(kind, opt, device)
                row = dict(set=mode, dataroot=root, loader=kind, batch_size=bs, images_per_s=None,
                           setup_s=round(time.perf_counter() - start, 2), skipped=None)
                if isinstance(loader, str):
                    row.update(setup_s=None, skipped=loader)
                else:
                    row["images_per_s"] = round(measure(loader, device, args.warmup, args.batches), 1)
                    del loader
                rows.append(row)
                print(json.dumps(row), flush=True)
    write(args, device, rows)


def write(args, device, rows):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    tag = "cuda_" + device_name(device).split()[-1].lower() if device.type == "cuda" else "cpu"
    stem = os.path.join(args.out, f"loaders_{tag}_{datetime.date.today():%Y%m%d}")
    report = dict(device=device_name(device), versions=versions(), git_commit=commit,
                  command=" ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
                  num_threads=args.num_threads, intra_op_threads=args.intra_op_threads, batches=args.batches, warmup=args.warmup,
                  load_size=286, crop_size=256, rows=rows)
    os.makedirs(args.out, exist_ok=True)
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=2)
    lines = [f"# Loader throughput on {report['device']} ({datetime.date.today()})", "",
             f"commit {commit}; {', '.join(f'{k} {v}' for k, v in report['versions'].items() if v)}", "",
             f"`{report['command']}`", "",
             f"286 load, 256 crop, {args.batches} timed batches after {args.warmup} warm-up; "
             f"torch loader workers / DALI threads: {args.num_threads}; intra-op threads: {args.intra_op_threads}; "
             f"images = pairs.", "",
             "| set | loader | bs | images/s | setup s | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['loader']} | {r['batch_size']} | {r['images_per_s'] or ''} | "
                     f"{r['setup_s'] if r['setup_s'] is not None else ''} | {r['skipped'] or ''} |")
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")


if __name__ == "__main__":
    main()
