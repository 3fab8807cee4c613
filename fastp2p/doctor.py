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
from fastp2p.parity import (check_graph_with_pool, check_options, check_training, reference_config, run,
                            synthetic_batches, tolerance_of)


def add_doctor_flags(parser):
    group = parser.add_argument_group("fastp2p.doctor")
    group.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON to FILE")
    group.add_argument("--all", action="store_true",
                       help="check every fast path that can run on this device, not only those the flags turn on")
    group.add_argument("--paths", default=None, metavar="NAME,...",
                       help="check these paths (comma-separated names) instead, each alone against the reference")
    group.add_argument("--no_timing", action="store_true", help="check only, do not time the iteration")
    group.add_argument("--repeats", type=int, default=5, help="timed iterations per row (the median is reported)")


def only(opt, flags):
    """``opt`` with every fast path off but for ``flags`` (CLI flags, e.g. ['--amp', 'bf16', '--foreach_cast', 'on'];
    a flag without a value takes its const, as --compile alone does)."""
    values = {path.name: path.off_flag for path in PATHS}
    for i, flag in enumerate(flags):
        if flag.startswith("--"):
            given = flags[i + 1] if i + 1 < len(flags) and not flags[i + 1].startswith("--") else None
            values[flag[2:]] = given if given is not None else BY_NAME[flag[2:]].flag.get("const")
    return opt.replace(reference=False, **values)


def alone(opt, device, name):
    """(EngineConfig of path ``name`` alone with the paths it needs, that of those it needs only: its baseline), or
    (None, the reason it cannot run here)."""
    path = BY_NAME[name]
    if path.check is None:
        return None, "it has no check of its own"
    if device.type != "cuda" and not path.check.cpu:
        return None, "it needs a GPU"
    try:
        return (resolve_engine(only(opt, [*path.check.needs, *path.on_flags()]), device),
                resolve_engine(only(opt, list(path.check.needs)), device)), None
    except OptionError as error:
        return None, str(error).split(": ", 1)[-1]


def result(name, verdict=None, why=None, tolerance=None):
    entry = {"name": name, "status": "skipped" if verdict is None else ("ok" if verdict.ok else "failed"),
             "why": why if verdict is None else verdict.why}
    if verdict is not None:
        entry["worst"] = verdict.worst
    if tolerance is not None:
        entry["tolerance"] = vars(tolerance)
    return entry


def guarded(check):
    """The verdict of ``check()``, or a failed one with the first line of the error it raised."""
    from fastp2p.parity import Verdict

    try:
        return check()
    except Exception as error:  # a broken kernel may raise anything; the first line is what the user needs
        return Verdict(False, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")


def check_paths(opt, device, names, combined):
    """One result per path of ``names``, and one for their combination ``combined`` (the run's engine) when given:
    a path the combination passes with is ok; after a failed combination each path is checked alone."""
    results, together = [], None
    beside_amp = [name for name in combined.on() if name != "amp"] if combined is not None else []
    if beside_amp:  # --amp itself (bf16 against fp32) is checked alone, below
        together = guarded(lambda: check_training(opt, combined, device, reference_config(combined, True))[0])
        if together.ok and combined.cuda_graph:
            together = guarded(lambda: check_graph_with_pool(opt, combined, device))
        results.append(result(combination_name(combined), together, tolerance=tolerance_of(combined)))
    for name in names:
        if together is not None and together.ok and name in beside_amp:
            results.append(result(name, together, tolerance=BY_NAME[name].check.tolerance))
            continue
        configs, why = alone(opt, device, name)
        if configs is None:
            results.append(result(name, why=why))
            continue
        config, baseline = configs
        verdict = guarded(lambda: check_training(opt, config, device, baseline)[0])
        if verdict.ok and config.cuda_graph:
            verdict = guarded(lambda: check_graph_with_pool(opt, config, device))
        results.append(result(name, verdict, tolerance=BY_NAME[name].check.tolerance))
    return results


def combination_name(config):
    """The name of the check of ``config``'s paths together (against the plain path in its precision)."""
    return "together: " + "+".join(name for name in config.on() if name != "amp")


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
        config = asked if name == combination_name(asked) else configs[0] if configs else None
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
