"""Bytes DDP all-reduces per training iteration, counted by a comm hook, for pix2pix and CycleGAN in fp32 and bf16.

Each model is built as the trainer builds it (parse_options -> create_model -> setup -> prepare_model, DDP on, the
paper's networks: pix2pix unet_256 + 70x70 PatchGAN, CycleGAN resnet_9blocks + PatchGAN), and each DDP network gets
a hook that counts what every all-reduce sends (the bucket's elements in the wire precision of --grad_compression)
before passing the bucket on to the exchange the run would make. The counts are set beside the exact count of
trained parameters, to which they must add up: every trained parameter's gradient crosses the network once per
iteration (D's in the D step, G's in the G step). The counts do not depend on the image size of a fully
convolutional network, so CycleGAN runs on 64-pixel crops here (pix2pix's U-Net needs 256).

    python benchmarks/bench_comm_bytes.py                       # CPU, one gloo process: the byte table, ~1 min
    torchrun --nproc_per_node 8 benchmarks/bench_comm_bytes.py --time --batch_sizes 1 4 16
        # GPUs: the same table, plus each iteration's time under DDP against the same ranks training apart (no
        # all-reduce), whose ratio is the scaling efficiency docs/scaling.md predicts

Prints a markdown table; --out FILE also writes it there.
"""

import argparse
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import rows  # noqa: E402
from fastp2p import distributed  # noqa: E402
from fastp2p.checkpoint import unwrap  # noqa: E402
from fastp2p.engine.communication import COMPRESSIONS, WIRE_DTYPES, gradient_hook  # noqa: E402

CPU_CROP = {"cycle_gan": ["--crop_size", "64", "--load_size", "64"]}  # on a GPU, the paper's size for the timings


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(rows.MODELS), choices=rows.MODELS)
    p.add_argument("--batch_sizes", nargs="+", type=int, default=[1])
    p.add_argument("--compressions", nargs="+", default=list(COMPRESSIONS), choices=COMPRESSIONS)
    p.add_argument("--iters", type=int, default=2, help="counted iterations (the last one's bytes are reported)")
    p.add_argument("--time", action="store_true", help="also time iterations with DDP and without (GPUs)")
    p.add_argument("--timed_iters", type=int, default=30)
    p.add_argument("--out", help="also write the table to this file")
    return p.parse_args(argv)


def join_group():
    """Under torchrun, its process group; else a gloo group of this one process (DDP then runs every hook)."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=0, world_size=1)
        return torch.device("cpu")
    gpu = torch.cuda.is_available()
    return distributed.init_device([int(os.environ["LOCAL_RANK"])] if gpu else [])


def flags_for(model, batch_size, device):
    """The paper's networks (CycleGAN on the CPU at 64 pixels: the counts do not depend on the image size)."""
    flags = rows.model_flags(rows.SIZES["paper"], model, batch_size, device)
    return flags + (CPU_CROP.get(model, []) if device.type == "cpu" else [])


class ByteCounter:
    """A DDP comm hook that adds up what each all-reduce sends, then makes the exchange ``compression`` makes (for
    fp32, DDP's built-in C++ all-reduce, torch's Python twin of it: the same average)."""

    def __init__(self, compression):
        self.wire = WIRE_DTYPES[compression]
        hook = gradient_hook(compression)
        self.exchange = hook[1] if hook else allreduce_hook
        self.bytes = self.calls = 0
        self.__name__ = self.__qualname__ = f"count_{compression}_bytes"  # DDP checks and logs a hook by its name

    def __call__(self, state, bucket):
        self.bytes += bucket.buffer().numel() * self.wire.itemsize
        self.calls += 1
        return self.exchange(state, bucket)


def count_bytes(args, model_name, batch_size, compression, device):
    """{network: (trained parameters, bytes counted in the last iteration, all-reduces)}."""
    opt, model, _, step = rows.build(flags_for(model_name, batch_size, device), device, ddp=True,
                                     grad_compression="fp32", cuda_graph=False)  # the hook below is the only one
    counters = {}
    for name, net in model.networks():
        counters[name] = ByteCounter(compression)
        net.register_comm_hook(None, counters[name])
    batches = rows.random_batches(opt, device, count=2)
    for i in range(args.iters):
        for counter in counters.values():
            counter.bytes = counter.calls = 0
        step(batches[i % len(batches)])
    # every parameter is trained (the G step freezes D for its backward only, hence no requires_grad filter)
    return {name: (sum(p.numel() for p in unwrap(net).parameters()), counters[name].bytes, counters[name].calls)
            for name, net in model.networks()}


def median_iteration_ms(args, model_name, batch_size, compression, device, ddp):
    opt, _, _, step = rows.build(flags_for(model_name, batch_size, device), device, ddp=ddp,
                                 grad_compression=compression)
    batches = rows.random_batches(opt, device, count=2)
    rows.run_steps(step, batches, max(12, args.iters))  # warm-up, past the CUDA graph's DDP warm-up
    times = []
    for i in range(args.timed_iters):
        rows.sync(device)
        start = time.perf_counter()
        rows.run_steps(step, batches, 1, start=i)
        rows.sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv=None):
    args = parse_args(argv)
    device = join_group()
    world = dist.get_world_size()
    lines = [f"# Bytes all-reduced per iteration ({world} process(es), {device.type})", "",
             f"`{' '.join(['python', *sys.argv])}` (torch {torch.__version__})", "",
             "| model | batch | wire | network | trained params | bytes counted | bytes = params x wire size | "
             "all-reduces | MB / iteration |" + (" ms DDP | ms apart | efficiency |" if args.time else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|---|---|" if args.time else "")]
    for model_name in args.models:
        for batch_size in args.batch_sizes:
            for compression in args.compressions:
                counts = count_bytes(args, model_name, batch_size, compression, device)
                wire = WIRE_DTYPES[compression].itemsize
                timing = ""
                if args.time:
                    with_ddp = median_iteration_ms(args, model_name, batch_size, compression, device, ddp=True)
                    apart = median_iteration_ms(args, model_name, batch_size, compression, device, ddp=False)
                    timing = f" {with_ddp:.2f} | {apart:.2f} | {apart / with_ddp:.1%} |"
                counts["all"] = tuple(map(sum, zip(*counts.values(), strict=True)))
                for name, (params, counted, calls) in counts.items():
                    lines.append(f"| {model_name} | {batch_size} | {compression} | {name} | {params:,} | "
                                 f"{counted:,} | {'yes' if counted == params * wire else 'NO'} | {calls} | "
                                 f"{counted / 1e6:.1f} |" + (timing if name == "all" else " | | |" * args.time))
    if distributed.is_main_process():
        table = "\n".join(lines)
        print(table)
        if args.out:
            with open(args.out, "w") as f:
                f.write(table + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
