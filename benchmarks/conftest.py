"""The benchmarks' harness on pytest-benchmark: the size preset, the selection options, the device, and ``timed``,
which times a function that ends on a device synchronisation and records what the report and the gate read.

    python -m pytest benchmarks --benchmark-only --benchmark-json RESULT.json            # paper size on a GPU
    python -m pytest benchmarks --benchmark-only --fastp2p-size small --benchmark-json RESULT.json   # the CPU
    python -m pytest benchmarks --benchmark-disable --fastp2p-size small                 # each once, as a test

The size is said in the run's header; the JSON's machine_info carries it with the device, versions and commit.
"""

import math
import os
import shlex
import statistics
import sys
import time

import pytest
import torch

if not torch.cuda.is_available():  # the kernel benchmarks run in Triton's interpreter, set before Triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks import rows  # noqa: E402

SELECTIONS = {"fastp2p_models": "model", "fastp2p_batch_sizes": "batch_size", "fastp2p_rows": "row"}


def pytest_addoption(parser):
    group = parser.getgroup("fastp2p benchmarks")
    group.addoption("--fastp2p-size", choices=list(rows.SIZES), default=None,
                    help="paper: 256x256 and the paper's networks (default on a GPU); small: small nets and crops "
                         "(default on the CPU)")
    group.addoption("--fastp2p-models", nargs="+", default=None, help="only these models")
    group.addoption("--fastp2p-batch-sizes", nargs="+", type=int, default=None, help="only these batch sizes")
    group.addoption("--fastp2p-rows", nargs="+", default=None,
                    help="only these rows (e.g. reference cuda_graph); compile_max_autotune runs only when named")
    group.addoption("--fastp2p-rounds", type=int, default=None,
                    help="timed rounds per benchmark instead of each module's (a quicker, noisier run)")
    group.addoption("--fastp2p-unpaired", action="store_true",
                    help="time no reference round beside each round of a row (half the time; the gate then "
                         "compares fastest rounds)")


def bench_device():
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def chosen_size(config):
    """(Size, why): the option's, else paper on a GPU and small on the CPU."""
    asked = config.getoption("fastp2p_size")
    if asked:
        return rows.SIZES[asked], "--fastp2p-size"
    cuda = bench_device().type == "cuda"
    return rows.SIZES["paper" if cuda else "small"], f"the default on {'a GPU' if cuda else 'the CPU'}"


def pytest_configure(config):
    device = bench_device()
    if device.type == "cpu":
        # on a shared few-core machine more intra-op threads mostly spin waiting for each other: noise
        torch.set_num_threads(1)
    else:
        torch.backends.cudnn.benchmark = True  # as the trainer (default --preprocess)


def pytest_report_header(config):
    size, why = chosen_size(config)
    threads = ", 1 intra-op thread" if bench_device().type == "cpu" else ""
    return f"fastp2p benchmarks: size {size.name} ({why}): {size.about}; device {bench_device()}{threads}"


def pytest_generate_tests(metafunc):
    """A benchmark module parametrizes its tests by ``generate(metafunc, size, device)``."""
    generate = getattr(metafunc.module, "generate", None)
    if generate is not None:
        generate(metafunc, chosen_size(metafunc.config)[0], bench_device())


def pytest_collection_modifyitems(config, items):
    """--fastp2p-models/--fastp2p-batch-sizes/--fastp2p-rows deselect the cases whose parameter is not named."""
    chosen = {param: config.getoption(option) for option, param in SELECTIONS.items() if config.getoption(option)}
    if not chosen:
        return
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None) and item.callspec.params or {}
        fits = all(param not in params or params[param] in values for param, values in chosen.items())
        (keep if fits else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_benchmark_update_machine_info(config, machine_info):
    size, why = chosen_size(config)
    machine_info["fastp2p"] = dict(rows.environment(bench_device()), size=size.name, size_chosen_by=why,
                                   command=" ".join(shlex.quote(a) for a in [sys.executable, "-m", "pytest",
                                                                             *config.invocation_params.args]))


@pytest.fixture(scope="session")
def device():
    return bench_device()


@pytest.fixture(scope="session")
def size(request):
    return chosen_size(request.config)[0]


@pytest.fixture(scope="session")
def environment(device):
    return rows.environment(device)


# the shortest timed round, per device: a shorter one measures the timer and the scheduler more than the work (on a
# GPU the device is synchronised once per round, so short rounds are precise there)
ROUND_SECONDS = {"cuda": 0.005, "cpu": 0.3}


class GroupReference:
    """The reference row's timed round of the group being run, kept after its test so that every later row of the
    group times one round of it just before each of its own rounds: two adjacent rounds share the machine's load, so
    their ratio keeps what the code changed even where other work comes and goes between rows. ``release`` ends
    what the kept round holds open (a loader's workers) once the next group's reference replaces it, or at the end."""

    group = timed_round = units = release = None

    def keep(self, group, timed_round, units, release=None):
        self.end()
        self.group, self.timed_round, self.units, self.release = group, timed_round, units, release

    def end(self):
        if self.release is not None:
            self.release()
        self.group = self.timed_round = self.release = None

    def seconds(self):
        start = time.perf_counter()
        self.timed_round()
        return time.perf_counter() - start


@pytest.fixture(scope="session")
def group_reference():
    kept = GroupReference()
    yield kept
    kept.end()


@pytest.fixture
def timed(benchmark, device, environment, group_reference, request):
    """``timed(target, group=, row=, units=, unit=, rounds=, reference=, round_seconds=, **info)`` times ``target``
    (one call does ``units`` of work) over ``rounds`` rounds under ``group`` (one table block: the rows of one
    configuration, the reference first). A round is as many calls as last ``round_seconds`` (by default
    ROUND_SECONDS; one call where it runs in Triton's interpreter), then a device synchronisation; the one or two
    calls timed to size the rounds are also a warm-up. Records ``<unit>_per_s`` (median) and ``info`` in extra_info, and
    for a row whose group's reference ran before it in this process, ``x_ref_paired``: the median over rounds of its
    speed over the reference's round timed just before (what the gate compares). A reference row hands over with
    ``release`` what its round holds open, to be ended when it is no longer kept. With --benchmark-disable it calls
    ``target`` once and returns None."""

    def call_seconds(target):
        start = time.perf_counter()
        target()
        rows.sync(device)
        return time.perf_counter() - start

    def run(target, *, group, row, units, unit, rounds, reference=False, release=None, round_seconds=None,
            **info):
        calls, shortest = 1, round_seconds or ROUND_SECONDS[device.type]
        if not benchmark.disabled and not info.get("interpreter"):
            once = call_seconds(target)
            if once < shortest:  # a first call may be cold: the second, warm one sizes the rounds
                once = call_seconds(target)
            calls = min(10_000, max(1, math.ceil(shortest / once)))

        def timed_round():
            for _ in range(calls):
                result = target()
            rows.sync(device)
            return result

        benchmark.group = group
        benchmark.extra_info.update(info, row=row, reference=reference, units=units * calls, unit=unit,
                                    calls_per_round=calls, **environment)
        paired = (not benchmark.disabled and not reference and not info.get("interpreter")
                  and not request.config.getoption("fastp2p_unpaired")
                  and group_reference.group == group and group_reference.timed_round is not None)
        reference_seconds = []
        result = benchmark.pedantic(timed_round, rounds=request.config.getoption("fastp2p_rounds") or rounds,
                                    setup=(lambda: reference_seconds.append(group_reference.seconds()))
                                    if paired else None)
        if reference:
            group_reference.keep(group, timed_round, units * calls, release)
        if benchmark.disabled:
            return None
        times = benchmark.stats.stats.data
        benchmark.extra_info[f"{unit}_per_s"] = units * calls / statistics.median(times)
        benchmark.extra_info[f"{unit}_per_s_repeats"] = [round(units * calls / t, 4) for t in times]
        if paired:
            speedups = [(units * calls / t) / (group_reference.units / r)
                        for t, r in zip(times, reference_seconds, strict=True)]
            benchmark.extra_info.update(x_ref_paired=statistics.median(speedups),
                                        x_ref_paired_repeats=[round(x, 4) for x in speedups])
        return result

    return run
