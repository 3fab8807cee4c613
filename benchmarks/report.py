"""Markdown tables from a pytest-benchmark JSON of benchmarks/, and the regression gate over two of them.

    python -m benchmarks.report RESULT.json [--out RESULT.md]
    python -m benchmarks.report RESULT.json --gate BASELINE.json [--tolerance 0.2]

Each row's speed is given against the reference row of its group in the same run (``x ref``: the reference path of
a configuration, torch's op for a kernel, NCHW for a layer). The gate compares these ratios, not times: a slower or
busier machine slows a row and its reference alike, so the ratio keeps what the code changed; the gate takes each
row's fastest round (another process's load only ever slows a round down). It fails (exit 1) where
a row's ratio fell by more than --tolerance from the baseline's, or where a row of the baseline did not run. Rows
timed in Triton's interpreter (the CPU's kernels) are checked to run, not compared: the interpreter is no measure.
"""

import argparse
import json
import sys

# extra_info fields shown in a table's last column, where a row has them
DETAILS = (("engine", "{}"), ("mfu", "MFU {:.1%}"), ("peak_mem_gib", "{:.2f} GiB"),
           ("data_wait_share", "data wait {:.1%}"), ("loader", "{}"), ("gb_per_s", "{:.1f} GB/s"),
           ("of_copy_roof", "{:.0%} of copy"), ("parameters", "{:,} parameters"),
           ("first_batch_s", "first batch {:.2f} s"), ("epoch_s", "epoch {:.2f} s"), ("interpreter", "interpreter"))


def load(path):
    """(the run's fastp2p machine info, its benchmarks)."""
    with open(path) as f:
        data = json.load(f)
    return data.get("machine_info", {}).get("fastp2p", {}), data.get("benchmarks", [])


def rate(bench, stat="median"):
    """Units of work per second at the median round (or the fastest: ``stat="min"``)."""
    return bench["extra_info"]["units"] / bench["stats"][stat]


def ratios(benchmarks, stat="median", compared_only=False):
    """(group, row) -> speed over the reference row of the same group and run (None where the group has none, and
    with ``compared_only`` where the row ran in Triton's interpreter)."""
    references = {b["group"]: rate(b, stat) for b in benchmarks if b["extra_info"].get("reference")}
    return {(b["group"], b["extra_info"]["row"]): (
        rate(b, stat) / references[b["group"]] if b["group"] in references
        and not (compared_only and b["extra_info"].get("interpreter")) else None) for b in benchmarks}


def details(info):
    shown = [spec.format(info[key]) for key, spec in DETAILS if info.get(key) not in (None, False)]
    if info.get("plan"):  # a norm's reduction: programs per launch, chunks per group, loads to combine them
        shown.append("{programs} programs, {splits} chunks, {combine_loads} combine loads".format(**info["plan"]))
    return "; ".join(shown)


def markdown(meta, benchmarks):
    """One table per subject (train, inference, loader, kernels, layers, optimizer), in the run's order."""
    lines = [f"# fastp2p benchmarks on {meta.get('device')} (size {meta.get('size')})", "",
             f"torch {meta.get('torch')}, triton {meta.get('triton')}, CUDA {meta.get('cuda')}, cuDNN "
             f"{meta.get('cudnn')}, {meta.get('cpu_threads')} intra-op threads; commit `{meta.get('commit')}`", "",
             f"`{meta.get('command')}`", "",
             "x ref: the row's speed over its group's reference row in this run. Median of the rounds."]
    ratio = ratios(benchmarks)
    subjects = {}
    for bench in benchmarks:
        subjects.setdefault(bench["group"].split()[0], []).append(bench)
    for subject, members in subjects.items():
        lines += ["", f"## {subject}", "", "| group | row | median ms | rate | x ref | details |",
                  "|---|---|---|---|---|---|"]
        for bench in members:
            info = bench["extra_info"]
            value = ratio[bench["group"], info["row"]]
            lines.append(f"| {bench['group']} | {info['row']} | {1e3 * bench['stats']['median']:.3f} | "
                         f"{rate(bench):.2f} {info['unit']}/s | {'' if value is None else f'{value:.2f}'} | "
                         f"{details(info)} |")
    return "\n".join(lines) + "\n"


def gate(current, baseline, tolerance):
    """(lines, passed): each row whose ratio fell by more than ``tolerance`` or that is missing from ``current``."""
    now, before = (ratios(run, "min", compared_only=True) for run in (current, baseline))
    lines = []
    for key, old in before.items():
        if key not in now:
            lines.append(f"missing: {' '.join(key)} (in the baseline, not in this run)")
        elif old is not None and now[key] is not None and now[key] < old * (1 - tolerance):
            lines.append(f"slower: {' '.join(key)}: x{now[key]:.3f} against the reference, baseline x{old:.3f}")
    compared = sum(1 for key, old in before.items() if old is not None and now.get(key) is not None)
    return lines + [f"{len(lines)} of {len(before)} rows failed the gate ({compared} ratios compared, tolerance "
                    f"{tolerance:.0%})"], not lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", help="a --benchmark-json file of benchmarks/")
    p.add_argument("--out", help="write the markdown here (printed either way)")
    p.add_argument("--gate", metavar="BASELINE", help="compare each row's x ref with this run's instead")
    p.add_argument("--tolerance", type=float, default=0.2, help="the share a ratio may lose before the gate fails")
    args = p.parse_args(argv)
    meta, benchmarks = load(args.result)
    if args.gate:
        lines, passed = gate(benchmarks, load(args.gate)[1], args.tolerance)
        print("\n".join(lines))
        return 0 if passed else 1
    text = markdown(meta, benchmarks)
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
