"""The optimizer alone: one Adam step over a model's trained parameters, with and without --step_cast's copy, by
torch's Adam and by the Triton Adam of --adam_kernel triton, against the device's copy roof. At batch 1 the step is
a large share of an iteration, and it is memory-bound: fp32 Adam reads the parameter, its gradient and both moments
and writes three of them back, 28 bytes per parameter; torch's step copy reads 4 and writes 2 more per conv
parameter, the Triton kernel's writes 2 from the value it has just computed.

On a GPU torch's step is its fused Adam, capturable, and each step is replayed as one CUDA graph (as the trainer's
graphed step runs it); on the CPU torch's is the trainer's CPU Adam and the Triton kernel runs in Triton's interpreter,
eagerly (a check that the script runs, not a figure to compare).

    python benchmarks/bench_adam.py --out benchmarks/results --commit SHA          # GPU: pix2pix 57.2M, CycleGAN 28.3M
    python benchmarks/bench_adam.py --device cpu --small --iters 2 --repeats 1     # CPU check

Writes <out>/adam_<device>_<yyyymmdd>.json and .md.
"""

import argparse
import datetime
import json
import os
import re
import statistics
import time

import torch

from fastp2p import networks
from fastp2p.engine.config import EngineConfig
from fastp2p.engine.cuda_graph import capture_after_warmup
from fastp2p.engine.optimizers import build_adam as build_adam_of
from fastp2p.engine.weight_cast import StepCopies

ADAM_BYTES_PER_PARAMETER = 28  # fp32: read p, grad, exp_avg, exp_avg_sq; write p, exp_avg, exp_avg_sq
COPY_BYTES_PER_PARAMETER = {"torch": 6, "triton": 2}  # read the fp32 weight (torch's copy only), write its bf16 copy
ROW_NAMES = {"torch": "adam", "triton": "triton_adam"}


def trained_networks(model, small):
    """The networks one of the model's training iterations updates, with its default flags (--small: ngf/ndf 16)."""
    width = 16 if small else 64
    if model == "pix2pix":
        return [networks.define_G(3, 3, width, "unet_128" if small else "unet_256", "batch", True),
                networks.define_D(6, width, "basic", 3, "batch")]
    generator = "resnet_6blocks" if small else "resnet_9blocks"
    return [networks.define_G(3, 3, width, generator, "instance", False) for _ in range(2)] + [
        networks.define_D(3, width, "basic", 3, "instance") for _ in range(2)]


def timed(device, fn, iters, repeats):
    """Median seconds per call of ``fn`` over ``repeats`` synchronized runs of ``iters`` calls."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times)


def as_graph(device, fn):
    """``fn`` replayed as a CUDA graph on a GPU (after warm-up on a side stream), else ``fn`` itself."""
    if device.type != "cuda":
        return fn
    graph, _ = capture_after_warmup(fn, torch.cuda.Stream(device))
    return graph.replay


def build_adam(kernel, params, device):
    """The trainer's Adam on ``device`` (engine.optimizers.build_adam): torch's, fused and capturable with a device
    learning rate on a GPU as the graphed step uses it, or the Triton kernel."""
    cuda = device.type == "cuda"
    if kernel == "triton" and not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton first compiles a kernel
    config = EngineConfig(fused_adam=cuda, adam_kernel=kernel, adam_moments=torch.float32, cuda_graph=cuda)
    return build_adam_of(config, params, 2e-4, 0.5, device)


def adam_row(model, nets, device, kernel, step_cast, args):
    params = [p for net in nets for p in net.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = build_adam(kernel, params, device)
    copied = 0
    if step_cast:
        for net in nets:
            copies = StepCopies(net, device.type, torch.bfloat16)
            copies.refresh_after_steps_of([optimizer])
            copied += sum(c.numel() for c in copies.copies)
    step = as_graph(device, optimizer.step)
    seconds = timed(device, step, args.iters, args.repeats)
    count = sum(p.numel() for p in params)
    moved = ADAM_BYTES_PER_PARAMETER * count + COPY_BYTES_PER_PARAMETER[kernel] * copied
    return dict(model=model, row=ROW_NAMES[kernel] + ("+step_copy" if step_cast else ""), parameters=count,
                copied_parameters=copied, ms=round(seconds * 1e3, 4), bytes=moved,
                gb_per_s=round(moved / seconds / 1e9, 1))


def copy_roof(device, args):
    """GB/s of one large device-to-device copy (bytes read + written): what a memory-bound kernel can reach."""
    numel = (2**28 if device.type == "cuda" else 2**22)  # 1 GiB fp32 on a GPU
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    seconds = timed(device, lambda: dst.copy_(src), max(args.iters, 5), args.repeats)
    return round(2 * src.numel() * src.element_size() / seconds / 1e9, 1)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["pix2pix", "cycle_gan"], choices=["pix2pix", "cycle_gan"])
    p.add_argument("--kernels", nargs="+", default=list(ROW_NAMES), choices=list(ROW_NAMES),
                   help="torch's Adam (fused on a GPU) and/or the Triton kernel")
    p.add_argument("--small", action="store_true", help="ngf/ndf 16 and the smaller generators (the CPU check)")
    p.add_argument("--iters", type=int, default=50, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--commit", default=os.environ.get("FASTP2P_COMMIT", "unknown"),
                   help="the tree's commit (a copy of the tree on a lent machine has no git history)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    torch.manual_seed(0)
    rows = []
    for model in args.models:
        for kernel in args.kernels:
            for step_cast in (False, True):
                nets = [net.to(device).to(memory_format=torch.channels_last)
                        for net in trained_networks(model, args.small)]
                rows.append(adam_row(model, nets, device, kernel, step_cast, args))
                print(rows[-1], flush=True)
                del nets
    roof = copy_roof(device, args)
    for row in rows:
        row["of_copy_roof"] = round(row["gb_per_s"] / roof, 3)
    meta = dict(device=name, torch=torch.__version__, cuda=torch.version.cuda, commit=args.commit, small=args.small,
                copy_roof_gb_per_s=roof, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    lines = [f"# Adam step alone on {name} ({meta['date'][:10]})", "",
             f"torch {meta['torch']}, CUDA {meta['cuda']}, commit `{args.commit[:12]}`; copy roof {roof} GB/s "
             f"(one large copy, bytes read + written)", "",
             "| model | row | parameters | step ms | GB/s | of copy roof |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['row']} | {r['parameters'] / 1e6:.1f}M | {r['ms']} | {r['gb_per_s']} | "
              f"{100 * r['of_copy_roof']:.0f}% |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        tag = "cpu" if device.type == "cpu" else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        stem = os.path.join(args.out, f"adam_{tag}_{datetime.date.today():%Y%m%d}")
        with open(stem + ".json", "w") as f:
            json.dump(dict(meta, rows=rows), f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
