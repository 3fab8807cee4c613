"""Where a training iteration's GPU time goes: the top kernels of a few steps under torch.profiler, and per
iteration the kernel count and the time of each category of kernel (convolutions, norms, optimizer, casts and
copies, pads/cats/sums, losses and other elementwise work).

Builds each model exactly as the training benchmark does (benchmarks/rows.py: same flags per row) and profiles eager
steps after warm-up; kernel times are those a CUDA-graph replay runs too, without the launch gaps.

    python -m benchmarks.profile_step --config cycle_gan:1:fused_adam pix2pix:16:channels_last --out DIR
    python -m benchmarks.profile_step --config pix2pix:1:reference --small --steps 1 --warmup 1   # CPU check

Writes, with --out, profile_<model>_bs<n>_<row>.md per config and profile_categories.json for all of them.
"""

import argparse
import collections
import json
import os
import re

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import rows

# kernel name patterns per category, first match wins (cuDNN, cutlass and Triton kernel names as they appear)
CATEGORIES = (
    ("optimizer", r"adam"),
    ("norm", r"_stats_|_apply_kernel|_partial_kernel|_combine|batch_norm|instance_norm|welford|bn_"),
    ("cast_copy", r"copy|cast|convert|nchwtonhwc|nhwctonchw"),
    ("convolution", r"conv|cudnn|cutlass|gemm|sm\d+_xmma|dgrad|wgrad|implicit|winograd|fprop"),
    ("pad_cat_sum", r"reflection|_pad|cat|reduce|sum"),
    ("loss", r"loss|mse|l1|binary_cross"),
)


def category_of(kernel_name):
    return next((name for name, pattern in CATEGORIES if re.search(pattern, kernel_name.lower())), "other")


def category_sums(prof, steps):
    """Per iteration: device microseconds per category and the number of kernels, from the profiler's device
    events (none on a CPU-only run)."""
    kernels = [event for event in prof.events() if event.device_type.name == "CUDA"]
    micros = collections.Counter()
    for event in kernels:
        micros[category_of(event.name)] += event.device_time_total
    return dict(kernels_per_iter=len(kernels) / steps,
                us_per_iter={name: round(total / steps, 1) for name, total in sorted(micros.items())})


def profile_config(args, model_name, batch_size, row):
    base = rows.observed_flags(model_name, batch_size, args.small, args.device, args.seed)
    engine, steps = rows.warmed_up(base + rows.row_flags(row, base, args.device), args.device, args.seed,
                                   args.warmup)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        steps(args.steps)
    sort_by = "self_cuda_time_total" if args.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort_by, row_limit=args.top, max_name_column_width=70)
    sums = dict(model=model_name, batch_size=batch_size, row=row, engine=engine.describe(),
                **category_sums(prof, args.steps))
    title = f"{model_name} bs{batch_size} row {row} ({engine.describe()}), {args.steps} steps"
    summary = f"kernels per iteration {sums['kernels_per_iter']:g}; device us per iteration {sums['us_per_iter']}"
    return f"## {title}\n\n{summary}\n\n```\n{table}\n```\n", sums


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", required=True, help="model:batch_size:row, a row of benchmarks/rows.py")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for profile_<model>_bs<n>_<row>.md")
    p.add_argument("--small", action="store_true", help="the small size's nets (the CPU check)")
    args = p.parse_args()
    args.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    torch.backends.cudnn.benchmark = True
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    all_sums = []
    for spec in args.config:
        model_name, batch_size, row = spec.split(":")
        text, sums = profile_config(args, model_name, int(batch_size), row)
        all_sums.append(sums)
        print(text, flush=True)
        if args.out:
            name = f"profile_{model_name}_bs{batch_size}_{row}.md"
            with open(os.path.join(args.out, name), "w") as f:
                f.write(text)
            with open(os.path.join(args.out, "profile_categories.json"), "w") as f:
                json.dump(all_sums, f, indent=1)


if __name__ == "__main__":
    main()
