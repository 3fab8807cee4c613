"""Where a training iteration's GPU time goes: the top kernels of a few steps under torch.profiler.

Builds each model exactly as bench_train.py does (same flags per row) and profiles eager steps after
warm-up; kernel times are those a CUDA-graph replay runs too, without the launch gaps.

    python benchmarks/profile_step.py --config cycle_gan:1:fused_adam pix2pix:16:channels_last --out DIR
"""

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import GPU_CHAIN, batchable, build, model_flags, random_batches, row_flags, run_steps, sync  # noqa: E402


def profile_config(args, model_name, batch_size, row):
    argv = model_flags(args, model_name, batch_size) + row_flags(row, GPU_CHAIN, batchable(args, model_name))
    opt, model, engine, step = build(argv, args.device, args.seed)
    batches = random_batches(opt, args.device)
    run_steps(model, step, batches, args.warmup)
    sync(args.device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run_steps(model, step, batches, args.steps)
        sync(args.device)
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.top, max_name_column_width=70)
    title = f"{model_name} bs{batch_size} row {row} ({engine.describe()}), {args.steps} steps"
    return f"## {title}\n\n```\n{table}\n```\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", required=True, help="model:batch_size:row, row as in bench_train.py")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for profile_<model>_bs<n>_<row>.md")
    args = p.parse_args()
    args.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    args.small, args.pool_size = False, 0  # no image pool: warm-up need not fill one
    torch.backends.cudnn.benchmark = True
    for spec in args.config:
        model_name, batch_size, row = spec.split(":")
        text = profile_config(args, model_name, int(batch_size), row)
        print(text, flush=True)
        if args.out:
            name = f"profile_{model_name}_bs{batch_size}_{row}.md"
            with open(os.path.join(args.out, name), "w") as f:
                f.write(text)


if __name__ == "__main__":
    main()
