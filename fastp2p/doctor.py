"""``python -m fastp2p.doctor``: which fast paths work on this device, what each buys, and the environment.

It takes fastp2p.train's flags (model, networks, crop size, batch size, switches) and checks the paths those flags
(and 'auto') turn on, or with ``--all`` every path that can run here: one training iteration of the configured model
at its shapes (several under CUDA graphs, for the capture and replays), fast paths against the plain reference path
from the same weights, batches and random state, at the tolerance each path declares (fastp2p/parity.py). Where
the paths together fail, each is checked alone to name the culprit. Then it times the iteration, the reference
against each path. One line per path: ok, failed (why) or skipped (why); exit code 0 when every checked path
passed, 1 otherwise. ``--json FILE`` writes it all.
"""

import json
import statistics
import sys

from fastp2p import distributed
from fastp2p.engine import resolve_engine
from fastp2p.engine.cuda_graph import WARMUP_STEPS
from fastp2p.engine.registry import BY_NAME, PATHS
from fastp2p.environment import describe, environment
from fastp2p.errors import OptionError, UserError
from fastp2p.options import parse_options
from fastp2p.parity import (TOGETHER, alone, check_options, paths_beside_amp, reference_config, run, run_check,
                            synthetic_batches)


def add_doctor_flags(parser):
    group = parser.add_argument_group("fastp2p.doctor")
    group.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON to FILE")
    group.add_argument("--all", action="store_true",
                       help="check every fast path that can run on this device, not only those the flags turn on")
    group.add_argument("--paths", default=None, metavar="NAME,...",
                       help="check these paths (comma-separated names) instead, each alone against the reference")
    group.add_argument("--no_timing", action="store_true", help="check only, do not time the iteration")
    group.add_argument("--repeats", type=int, default=5, help="timed iterations per row (the median is reported)")


def check_paths(opt, device, names, combined):
    """One result per path of ``names``, and one for their combination ``combined`` (the run's engine) when given:
    a path the combination passes with is ok; after a failed combination each path is checked alone."""
    results, together = [], None
    if combined is not None and paths_beside_amp(combined):
        together = run_check(opt, device, TOGETHER, combined)
        results.append(together)
    for name in names:
        if together is not None and together["status"] == "ok" and name in paths_beside_amp(combined):
            results.append({**together, "name": name, "why": "checked with the others: " + together["why"]})
        else:
            results.append(run_check(opt, device, name, combined))
    return results


def milliseconds(opt, config, device, repeats):
    """Median time of one training iteration under ``config`` (after a warm-up that covers a graph's capture)."""
    warmup = WARMUP_STEPS + 2 if config.cuda_graph else 2
    seconds = run(check_options(opt), config, device, synthetic_batches(opt, [opt.batch_size] * (warmup + repeats)),
                  ).seconds[warmup:]
    return 1000 * statistics.median(seconds)


def add_timings(opt, device, results, asked, repeats):
    reference = guarded_time(opt, reference_config(asked), device, repeats)
    rows = [{"name": "reference", "status": "-", "why": "", "ms_per_iteration": reference}]
    for entry in results:
        name = entry["name"]
        configs = alone(opt, device, name)[0] if name in BY_NAME else None
        config = asked if name == TOGETHER else configs[0] if configs else None
        if entry["status"] == "ok" and config is not None:
            entry["ms_per_iteration"] = guarded_time(opt, config, device, repeats)
            if reference and entry["ms_per_iteration"]:
                entry["speedup"] = reference / entry["ms_per_iteration"]
    return rows + results


def guarded_time(opt, config, device, repeats):
    try:
        return milliseconds(opt, config, device, repeats)
    except Exception:  # a path that fails its timing has failed its check already, or fails here for memory
        return None


def run_summary(opt, asked):
    model = f"{opt.model}: {opt.netG} (ngf {opt.ngf}) + {opt.netD} D (ndf {opt.ndf}), norm {opt.norm}"
    return f"{model}, {opt.crop_size}x{opt.crop_size}, batch {opt.batch_size}; {asked.describe()}"


def format_row(entry):
    timing = f"{entry['ms_per_iteration']:9.2f}" if entry.get("ms_per_iteration") else " " * 9
    speedup = f"{entry['speedup']:6.2f}x" if entry.get("speedup") else ""
    why = entry["why"]
    if entry["status"] == "ok" and "worst" in entry:
        worst = entry["worst"]
        why = (f"loss {worst['loss']:.2g}, gradient L2 {worst['gradient_rel_l2']:.2g}, weight {worst['weight']:.2g} "
               f"({entry['tolerance']['precision']} tolerance)")
    return f"  {entry['name']:<22} {entry['status']:<8} {timing} {speedup:>8}  {why}"


def verdict_of(results):
    counts = {status: sum(entry["status"] == status for entry in results) for status in ("ok", "failed", "skipped")}
    passed = counts["failed"] == 0
    summary = ", ".join(f"{n} {status}" for status, n in counts.items())
    return passed, (f"verdict: every checked path passed ({summary})" if passed else
                    f"verdict: {counts['failed']} check(s) failed ({summary}); a path that fails is turned off at a "
                    f"run's start when 'auto' chose it (--selfcheck)")


def diagnose(opt, device, all_paths=False, paths=None, timing=True, repeats=5):
    """The doctor's report: environment, run, one result per path, the verdict."""
    asked = resolve_engine(opt, device)
    if paths:
        names, combined = paths, None
    elif all_paths:
        names, combined = [path.name for path in PATHS if path.check is not None], asked
    else:
        names, combined = [name for name in asked.on() if BY_NAME[name].check is not None], asked
    results = check_paths(opt, device, names, combined)
    if timing:
        results = add_timings(opt, device, results, asked, repeats)
    passed, line = verdict_of(results)
    return {"environment": environment(device), "run": run_summary(opt, asked), "engine": asked.on(),
            "paths": results, "passed": passed, "verdict": line}


def print_report(report):
    print(describe(report["environment"]))
    print(f"run: {report['run']}")
    print(f"  {'path':<22} {'check':<8} {'ms/iter':>9} {'speed-up':>8}  why / largest differences")
    for entry in report["paths"]:
        print(format_row(entry))
    print(report["verdict"])


def main(argv=None):
    opt = parse_options(argv, is_train=True, prog="fastp2p.doctor", add_options=add_doctor_flags)
    try:
        device = distributed.init_device(opt.gpu_ids)
        paths = [name for name in opt.paths.split(",") if name] if opt.paths else None
        unknown = [name for name in paths or () if name not in BY_NAME]
        if unknown:
            raise OptionError(f"--paths: no fast path named {', '.join(unknown)}; the paths: {', '.join(BY_NAME)}")
        report = diagnose(opt, device, opt.all, paths, not opt.no_timing, opt.repeats)
        if distributed.is_main_process():
            print_report(report)
            if opt.json:
                with open(opt.json, "w") as f:
                    json.dump(report, f, indent=1, default=str)
        return 0 if report["passed"] else 1
    except UserError as e:
        print(f"fastp2p.doctor: error: {e}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup_distributed()


if __name__ == "__main__":
    sys.exit(main())
