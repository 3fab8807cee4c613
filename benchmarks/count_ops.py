"""Kernels per training iteration, row by row: a launch count that needs no GPU.

At batch 1 both models are launch-bound: each kernel costs a few microseconds of GPU time even inside a CUDA
graph, and more of host time without one. This counts, over one iteration after warm-up, the aten operations
that launch work (views and metadata excluded) and the Triton launches, for the training benchmark's rows
(benchmarks/rows.py, as on a GPU) up to +batch_passes (+cuda_graph replays the same kernels), and +fused_conv (that
row with --fused_conv on). The nets run at their real sizes on the CPU; Triton kernels are counted, not run (a count
needs no values), with the launch plan of an H100 (132 SMs), so the norm layers choose the kernels they choose there.

What it does not see: the work an aten kernel does inside (a cuDNN convolution backward is one op here and
two or three GPU kernels, PyTorch's CUDA reflection pad also copies its input to NCHW), and CPU autocast,
whose op lists are close to but not exactly CUDA's.

    python -m benchmarks.count_ops --out benchmarks/results      # a few minutes on 2 CPU cores
    python -m benchmarks.count_ops --small                         # the small size's nets, seconds

Writes ops_<yyyymmdd>.json (per row: totals and every op's count) and .md into --out. tests/test_kernel_counts.py
holds the --small totals exactly: a change that moves them updates its table and commits a new ops file.
"""

import argparse
import collections
import contextlib
import datetime
import json
import os
import shlex
import sys
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks import rows

H100_PROGRAMS = 4 * 132  # launch.target_programs on an H100: 4 waves of 132 SMs
FUSED_CONV = "fused_conv"  # the row before it with --fused_conv on (auto leaves it off, so it has no training row)
ROWS = rows.ROW_NAMES[:rows.ROW_NAMES.index("batch_passes") + 1] + (FUSED_CONV,)
AS_ON = torch.device("cuda", 0)  # the rows are those of a GPU: their flags are resolved for one
CPU = torch.device("cpu")  # where they are counted
# aten ops that only make views or read metadata, or allocate without writing: no kernel on a GPU
NO_KERNEL = {"view", "_unsafe_view", "as_strided", "t", "transpose", "permute", "expand", "slice", "select",
             "unsqueeze", "squeeze", "alias", "detach", "_reshape_alias", "reshape", "split", "split_with_sizes",
             "unbind", "view_as", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
             "is_same_size", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "lift_fresh", "set_",
             "_record_function_enter_new", "_record_function_exit"}  # the last two: profiler marks (optimizer steps)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that launch work, and Triton launches (as ``triton:<kernel>``), without running those."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def counting_triton(self):
        """Replace every Triton kernel's launch by a count (the interpreter's and the compiler's alike)."""
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction

        from fastp2p.kernels import norm_act

        def launch(kernel, *args, **kwargs):
            self.counts["triton:" + kernel.__name__] += 1

        with (mock.patch.object(InterpretedFunction, "run", launch), mock.patch.object(JITFunction, "run", launch),
              mock.patch.object(norm_act, "target_programs", lambda device: H100_PROGRAMS)):
            yield


def counted_rows(model_name, small, names=ROWS):
    """The rows of ``names`` counted for ``model_name``: a row whose own path the engine refuses for this model
    would repeat the row before."""
    base = rows.observed_flags(model_name, 1, small, CPU)
    return [row for row in names if not rows.row_blocker(row, base, AS_ON)]


def count_row(model_name, row, small, warmup=2, seed=0):
    """The kernels of one training iteration of ``row`` (or FUSED_CONV) for ``model_name`` at batch 1, after
    ``warmup`` iterations: totals (all, aten, Triton) and every op's count."""
    base = rows.observed_flags(model_name, 1, small, CPU, seed)
    argv = base + rows.row_flags(ROWS[-2] if row == FUSED_CONV else row, base, AS_ON)
    # channels-last is refused for InstanceNorm training on the CPU (torch's backward there is wrong at batch 1);
    # counting kernels needs no right gradients, so it is set on the resolved engine instead of asked for
    channels_last = "--channels_last" in argv and argv[argv.index("--channels_last") + 1] == "on"
    argv += ["--channels_last", "off", "--cuda_graph", "off"]  # CUDA-only; row_flags leaves it off before its row
    argv += ["--fused_conv", "on"] if row == FUSED_CONV else []
    counter = OpCounter()
    with counter.counting_triton():
        engine, steps = rows.warmed_up(argv, CPU, seed, warmup, channels_last=channels_last)
        counter.counts.clear()
        with counter:
            steps(1)
    counts = counter.counts
    triton = sum(n for name, n in counts.items() if name.startswith("triton:"))
    return dict(model=model_name, batch_size=1, row=row, engine=engine.describe(),
                total=sum(counts.values()), aten=sum(counts.values()) - triton, triton=triton,
                counts=dict(counts.most_common()))


def markdown(meta, counted, top):
    lines = [f"# Kernels per training iteration (counted on {meta['device']}, H100 launch plan)", "",
             f"commit {meta['commit']}, torch {meta['torch']}, command `{meta['command']}`", "",
             "| model | row | engine | total | aten ops | Triton launches | largest counts |",
             "|---|---|---|---|---|---|---|"]
    for row in counted:
        largest = ", ".join(f"{name} {n}" for name, n in list(row["counts"].items())[:top])
        lines.append(f"| {row['model']} bs{row['batch_size']} | {row['row']} | {row['engine']} | {row['total']} | "
                     f"{row['aten']} | {row['triton']} | {largest} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(rows.MODELS))
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=8, help="op counts shown per row in the markdown table")
    p.add_argument("--small", action="store_true", help="the small size's nets (fewer layers, other counts)")
    p.add_argument("--out", default=None, help="folder for ops_<yyyymmdd>.json and .md")
    args = p.parse_args()
    os.environ["TRITON_INTERPRET"] = "1"  # the kernels are never run; this keeps Triton from looking for a GPU
    meta = dict(rows.environment(CPU), small=args.small, launch_plan_programs=H100_PROGRAMS,
                command=" ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
                date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    counted = []
    for model_name in args.models:
        for row in counted_rows(model_name, args.small, args.rows):
            counted.append(count_row(model_name, row, args.small, args.warmup, args.seed))
            print(f"{model_name} {row}: {counted[-1]['total']} ({counted[-1]['aten']} aten, "
                  f"{counted[-1]['triton']} Triton)", flush=True)
    text = markdown(meta, counted, args.top)
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        stem = os.path.join(args.out, f"ops_{datetime.date.today():%Y%m%d}")
        with open(stem + ".json", "w") as f:
            json.dump(dict(meta, rows=counted), f, indent=1)
        with open(stem + ".md", "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
