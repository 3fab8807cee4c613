"""Markdown tables from a pytest-benchmark JSON of benchmarks/, the regression gate over two of them, and the
training goals' verdicts over a GPU evidence run's files.

    python -m benchmarks.report RESULT.json [--out RESULT.md]
    python -m benchmarks.report RESULT.json --gate BASELINE.json [--tolerance 0.2]
    python -m benchmarks.report FOLDER --goals [--out goals.md]       # every benchmark JSON below FOLDER

Each row's speed is given against the reference row of its group in the same run (``x ref``: the reference path of
a configuration, torch's op for a kernel, NCHW for a layer). The gate compares ratios, not times: a slower machine
slows a row and its reference alike. Each row's rounds are paired with rounds of its reference timed just before
them, so load that comes and goes cancels too; rows without a paired reference compare fastest rounds (load only
ever slows a round down). It fails (exit 1) where a row's ratio fell by more than --tolerance from the baseline's,
or where a row of the baseline did not run. Rows timed in Triton's interpreter (the CPU's kernels) are checked to
run, not compared: the interpreter is no measure.

The goals: for each goal configuration, the default fast path's throughput against its target, the reference path
and the torch.compile rival; and for each technique that ``auto`` leaves off until measured, its row against the row
without it, called faster only where every repeat beats every repeat of its baseline (repeats on a shared GPU vary by
several percent, so a median a few percent ahead decides nothing).
"""

import argparse
import glob
import json
import os
import sys

# extra_info fields shown in a table's last column, where a row has them
DETAILS = (("engine", "{}"), ("mfu", "MFU {:.1%}"), ("peak_mem_gib", "{:.2f} GiB"),
           ("data_wait_share", "data wait {:.1%}"), ("loader", "{}"), ("gb_per_s", "{:.1f} GB/s"),
           ("of_copy_roof", "{:.0%} of copy"), ("parameters", "{:,} parameters"),
           ("first_batch_s", "first batch {:.2f} s"), ("epoch_s", "epoch {:.2f} s"), ("interpreter", "interpreter"))

# (model, batch size) -> (images/s, times the reference path): the training goals on Hopper at 256x256
GOALS = {("pix2pix", 1): (700, 12), ("pix2pix", 16): (5000, None), ("cycle_gan", 1): (150, 10),
         ("cycle_gan", 4): (250, None)}
RIVAL_FACTOR = 2.0  # each goal configuration at least this many times torch.compile(mode="reduce-overhead")
DEFAULT_ROW = "cudnn_search_all"  # the last row of the chain that `auto` turns on by default on a GPU
RIVAL_ROW = "compile_reduce_overhead"
# a technique `auto` leaves off -> the rows it is compared with, the first present (--two_streams' row is skipped
# for pix2pix, so the Triton Adam's baseline there is the default row)
SWITCH_BASELINES = {"two_streams": (DEFAULT_ROW,), "overlap_optimizer": (DEFAULT_ROW,),
                    "triton_adam": ("two_streams", DEFAULT_ROW)}


def load(path):
    """(the run's fastp2p machine info, its benchmarks); nothing for another tool's JSON."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        return {}, []
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


def paired_ratios(benchmarks):
    """(group, row) -> the row's median speed over the reference's round timed just before each of its rounds (the
    rows that have one: see benchmarks/conftest.py)."""
    return {(b["group"], b["extra_info"]["row"]): b["extra_info"]["x_ref_paired"] for b in benchmarks
            if b["extra_info"].get("x_ref_paired")}


def gate(current, baseline, tolerance):
    """(lines, passed): each row whose ratio fell by more than ``tolerance`` or that is missing from ``current``.
    Where both runs paired a row's rounds with its reference's, the paired ratios are compared (the load two
    adjacent rounds share cancels); else each run's fastest round over its reference's fastest."""
    fastest_now, fastest_before = (ratios(run, "min", compared_only=True) for run in (current, baseline))
    paired_now, paired_before = paired_ratios(current), paired_ratios(baseline)
    lines, compared = [], 0
    for key, old in fastest_before.items():
        if key not in fastest_now:
            lines.append(f"missing: {' '.join(key)} (in the baseline, not in this run)")
            continue
        paired = key in paired_now and key in paired_before
        new, old = (paired_now[key], paired_before[key]) if paired else (fastest_now[key], old)
        if old is None or new is None:
            continue
        compared += 1
        if new < old * (1 - tolerance):
            lines.append(f"slower: {' '.join(key)}: x{new:.3f} against the reference, baseline x{old:.3f} "
                         f"({'paired rounds' if paired else 'fastest rounds'})")
    return lines + [f"{len(lines)} of {len(fastest_before)} rows failed the gate ({compared} ratios compared, "
                    f"tolerance {tolerance:.0%})"], not lines


def train_rows(folder):
    """(machine info, (model, batch size, row) -> extra_info) of the training rows in every benchmark JSON below
    ``folder``, which must all come from one device; a later file's row replaces an earlier one's. A row that failed
    or was skipped is absent (the run's log says why)."""
    found, meta = {}, None
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.json"), recursive=True)):
        info, benchmarks = load(path)
        if not benchmarks:
            continue  # another tool's JSON (the doctor's), or a run that timed nothing
        meta = meta or info
        if info.get("device") != meta.get("device"):
            raise ValueError(f"{path} was measured on {info.get('device')}, an earlier file on {meta.get('device')}:"
                             " give one evidence run's folder")
        found.update({(b["extra_info"]["model"], b["extra_info"]["batch_size"], b["extra_info"]["row"]):
                      b["extra_info"] for b in benchmarks
                      if b["group"].startswith("train ") and "images_per_s" in b["extra_info"]})
    return meta or {}, found


def goals(folder):
    """The goals page: each goal configuration against its targets, then each switch against its baseline."""
    meta, found = train_rows(folder)

    def speed(model, batch, row):
        return found.get((model, batch, row), {}).get("images_per_s")

    lines = ["# Training goals and switches waiting for a measurement", "",
             f"device {meta.get('device')}, torch {meta.get('torch')}, triton {meta.get('triton')}, CUDA "
             f"{meta.get('cuda')}, commit {meta.get('commit')}", "",
             f"Default fast path: the `{DEFAULT_ROW}` row. Rival: `{RIVAL_ROW}`.", "",
             "| config | default fast path img/s | target | x reference | target | x compile rival | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for (model, batch), (target, times_reference) in GOALS.items():
        fast, reference, rival = (speed(model, batch, row) for row in (DEFAULT_ROW, "reference", RIVAL_ROW))
        wanted = "" if times_reference is None else f"{times_reference}x"
        if fast is None:
            lines.append(f"| {model} bs{batch} | not run | {target} |  | {wanted} |  | {RIVAL_FACTOR:g}x | no |")
            continue
        vs_reference, vs_rival = (fast / other if other else None for other in (reference, rival))
        checks = [fast >= target, None if vs_rival is None else vs_rival >= RIVAL_FACTOR]  # None: not measured
        if times_reference is not None:
            checks.append(None if vs_reference is None else vs_reference >= times_reference)
        met = "no" if False in checks else "not measured" if None in checks else "yes"
        shown = ["not measured" if x is None else f"{x:.2f}x" for x in (vs_reference, vs_rival)]
        lines.append(f"| {model} bs{batch} | {fast:.1f} | {target} | {shown[0]} | {wanted} | {shown[1]} | "
                     f"{RIVAL_FACTOR:g}x | {met} |")
    lines += ["", "## Switches `auto` leaves off until measured", "",
              "| config | technique | img/s | baseline | baseline img/s | ratio | verdict |",
              "|---|---|---|---|---|---|---|"]
    for model, batch in GOALS:
        for technique, candidates in SWITCH_BASELINES.items():
            row = found.get((model, batch, technique))
            if row is None:
                continue
            name = next((name for name in candidates if (model, batch, name) in found), None)
            baseline = found.get((model, batch, name))
            if baseline is None:
                lines.append(f"| {model} bs{batch} | {technique} |  | {name} |  |  | no verdict: baseline not run |")
                continue
            faster, slower = (min(a["it_per_s_repeats"]) > max(b["it_per_s_repeats"])
                              for a, b in ((row, baseline), (baseline, row)))
            verdict = "faster in every repeat" if faster else "slower in every repeat" if slower else "within noise"
            lines.append(f"| {model} bs{batch} | {technique} | {row['images_per_s']:.1f} | {name} | "
                         f"{baseline['images_per_s']:.1f} | {row['images_per_s'] / baseline['images_per_s']:.3f} | "
                         f"{verdict} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", help="a --benchmark-json file of benchmarks/ (with --goals: a folder of them)")
    p.add_argument("--out", help="write the markdown here (printed either way)")
    p.add_argument("--gate", metavar="BASELINE", help="compare each row's x ref with this run's instead")
    p.add_argument("--tolerance", type=float, default=0.2, help="the share a ratio may lose before the gate fails")
    p.add_argument("--goals", action="store_true", help="the training goals' verdicts over every JSON below RESULT")
    args = p.parse_args(argv)
    if args.gate:
        lines, passed = gate(load(args.result)[1], load(args.gate)[1], args.tolerance)
        print("\n".join(lines))
        return 0 if passed else 1
    text = goals(args.result) if args.goals else markdown(*load(args.result))
    print(text, end="")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
