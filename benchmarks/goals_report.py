"""The training goals and the switches still waiting for a GPU measurement, read from benchmarks/test_train.py's
--benchmark-json results.

gpu_evidence.py ends with this, so a short GPU loan leaves its verdicts in one page: for each goal configuration,
the default fast path's throughput against its target, the reference path and the torch.compile rival; and for
each technique that `auto` leaves off until measured, its row against the row without it. A technique counts as
faster only when every repeat of its row beats every repeat of its baseline (repeats on a shared GPU vary by
several percent, so a median a few percent ahead decides nothing).

    python -m benchmarks.goals_report /tmp/evidence --out /tmp/evidence    # reads every *.json below it
"""

import argparse
import glob
import json
import os

# (model, batch size) -> (images/s, times the reference path): the goals on Hopper at 256x256
GOALS = {("pix2pix", 1): (700, 12), ("pix2pix", 16): (5000, None), ("cycle_gan", 1): (150, 10),
         ("cycle_gan", 4): (250, None)}
RIVAL_FACTOR = 2.0  # each goal configuration at least this many times torch.compile(mode="reduce-overhead")
DEFAULT_ROW = "cudnn_search_all"  # the last row of the chain that `auto` turns on by default on a GPU
RIVAL_ROW = "compile_reduce_overhead"
# a technique `auto` leaves off -> the rows it is compared with, the first present (--two_streams' row is skipped
# for pix2pix, so the Triton Adam's baseline there is the default row)
BASELINES = {"two_streams": (DEFAULT_ROW,), "overlap_optimizer": (DEFAULT_ROW,),
             "triton_adam": ("two_streams", DEFAULT_ROW)}


def load_rows(folder):
    """(model, batch size, row) -> the training row's extra_info, over every pytest-benchmark JSON below ``folder``,
    which must all come from one device; a later file's row replaces an earlier one's. A row that failed or was
    skipped is absent from its file (the run's log says why)."""
    rows, meta = {}, {}
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.json"), recursive=True)):
        with open(path) as f:
            data = json.load(f)
        if not isinstance(data, dict) or "benchmarks" not in data:
            continue
        info = data.get("machine_info", {}).get("fastp2p", {})
        meta = meta or {key: info.get(key) for key in ("device", "torch", "triton", "cuda", "commit")}
        if info.get("device") != meta["device"]:
            raise ValueError(f"{path} was measured on {info.get('device')}, an earlier file on {meta['device']}: "
                             "give one evidence run's folder")
        for bench in data["benchmarks"]:
            row = bench["extra_info"]
            if bench["group"].startswith("train ") and "images_per_s" in row:
                rows[row["model"], row["batch_size"], row["row"]] = row
    return rows, meta


def throughput(row):
    """images/s of a row that ran, else None."""
    return None if row is None else row["images_per_s"]


def clearly_faster(row, baseline):
    """Whether every repeat of ``row`` is faster than every repeat of ``baseline``."""
    return min(row["it_per_s_repeats"]) > max(baseline["it_per_s_repeats"])


def goal_lines(rows):
    lines = ["| config | default fast path img/s | target | x reference | target | x compile rival | target "
             "| met |", "|---|---|---|---|---|---|---|---|"]
    for (model, batch), (target, target_ratio) in GOALS.items():
        fast, reference, rival = (rows.get((model, batch, name)) for name in (DEFAULT_ROW, "reference", RIVAL_ROW))
        speed = throughput(fast)
        ratio_target = "" if target_ratio is None else f"{target_ratio}x"
        if speed is None:
            why = "not run"
            lines.append(f"| {model} bs{batch} | {why} | {target} |  | {ratio_target} |  | {RIVAL_FACTOR:g}x | no |")
            continue
        vs_reference = speed / throughput(reference) if throughput(reference) else None
        vs_rival = speed / throughput(rival) if throughput(rival) else None
        checks = [speed >= target, None if vs_rival is None else vs_rival >= RIVAL_FACTOR]  # None: not measured
        if target_ratio is not None:
            checks.append(None if vs_reference is None else vs_reference >= target_ratio)
        met = "no" if False in checks else "not measured" if None in checks else "yes"
        lines.append(f"| {model} bs{batch} | {speed:.1f} | {target} | {_ratio(vs_reference)} | "
                     f"{ratio_target} | {_ratio(vs_rival)} | {RIVAL_FACTOR:g}x | "
                     f"{met} |")
    return lines


def _ratio(value):
    return "not measured" if value is None else f"{value:.2f}x"


def switch_lines(rows):
    lines = ["| config | technique | img/s | baseline | baseline img/s | ratio | verdict |",
             "|---|---|---|---|---|---|---|"]
    for model, batch in GOALS:
        for technique, candidates in BASELINES.items():
            row = rows.get((model, batch, technique))
            if row is None:
                continue
            name = next((name for name in candidates if (model, batch, name) in rows), None)
            baseline = rows.get((model, batch, name))
            if throughput(row) is None or throughput(baseline) is None:
                lines.append(f"| {model} bs{batch} | {technique} |  | {name} |  |  | no verdict: baseline not run |")
                continue
            ratio = throughput(row) / throughput(baseline)
            verdict = ("faster in every repeat" if clearly_faster(row, baseline)
                       else "slower in every repeat" if clearly_faster(baseline, row) else "within noise")
            lines.append(f"| {model} bs{batch} | {technique} | {throughput(row):.1f} | {name} | "
                         f"{throughput(baseline):.1f} | {ratio:.3f} | {verdict} |")
    return lines


def report(folder):
    rows, meta = load_rows(folder)
    header = (f"device {meta.get('device')}, torch {meta.get('torch')}, triton {meta.get('triton')}, "
              f"CUDA {meta.get('cuda')}, commit {meta.get('commit')}")
    return "\n".join(["# Training goals and switches waiting for a measurement", "", header, "",
                      f"Default fast path: the `{DEFAULT_ROW}` row. Rival: `{RIVAL_ROW}`.", "",
                      *goal_lines(rows), "", "## Switches `auto` leaves off until measured", "",
                      *switch_lines(rows)]) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a folder with benchmarks/test_train.py's --benchmark-json files anywhere below it")
    p.add_argument("--out", default=None, help="write goals.md here (printed either way)")
    args = p.parse_args(argv)
    text = report(args.folder)
    print(text, end="")
    if args.out:
        with open(os.path.join(args.out, "goals.md"), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
