"""The pytest-benchmark modules under benchmarks/: every benchmark runs once at the small size (so none rots between
timing runs), the size is said, never chosen silently, the training rows come from the fast-path registry and ask
for combinations the engine accepts, and the report and the regression gate read ratios against the reference row."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import report, rows
from fastp2p.engine import resolve_engine
from fastp2p.engine.registry import PATHS
from fastp2p.options import parse_options

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "benchmarks" / "results" / "cpu_small_baseline.json"
SUBJECTS = {"train", "inference", "loader", "kernels", "layers", "optimizer"}


def pytest_run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_every_benchmark_runs_once_at_the_small_size(tmp_path):
    run = pytest_run("benchmarks", "--benchmark-disable", "--fastp2p-size", "small", "-rs", "--junitxml",
                     str(tmp_path / "junit.xml"))
    assert run.returncode == 0, run.stdout[-4000:]
    assert "fastp2p benchmarks: size small (--fastp2p-size)" in run.stdout
    xml = (tmp_path / "junit.xml").read_text()
    modules = {f"benchmarks.test_{name}" for name in ("train", "inference", "loader", "kernels", "layers",
                                                       "optimizer")}
    assert all(f'classname="{module}"' in xml for module in modules)
    # what the CPU skips says why: the GPU-only paths and rival, a path the engine refuses for the model
    assert "declared GPU-only" in run.stdout and "not possible here" in run.stdout


def test_the_size_is_said_and_defaults_by_device():
    run = pytest_run("--collect-only", "benchmarks/test_optimizer.py", timeout=300)
    assert run.returncode == 0, run.stdout[-2000:]
    default = "paper" if torch.cuda.is_available() else "small"
    device = "a GPU" if torch.cuda.is_available() else "the CPU"
    assert f"fastp2p benchmarks: size {default} (the default on {device})" in run.stdout


def test_rows_follow_the_registry_one_path_added_per_row():
    named = [path.bench_row for path in PATHS if path.bench_row]
    assert list(rows.ROW_NAMES[1:1 + len(named)]) == named and rows.ROW_NAMES[0] == "reference"
    base = rows.model_flags(rows.SIZES["small"], "cycle_gan", 1, torch.device("cpu"))
    # on the CPU, channels-last is refused for CycleGAN's InstanceNorm training: left off its row and the later ones
    assert rows.row_blocker("channels_last", base, torch.device("cpu"))
    flags = rows.row_flags("step_cast", base, torch.device("cpu"))
    assert flags[flags.index("--channels_last") + 1] == "off" and flags[flags.index("--step_cast") + 1] == "on"
    assert flags[flags.index("--foreach_cast") + 1] == "off"  # step_cast replaces it


@pytest.mark.parametrize("model", rows.MODELS)
def test_every_gpu_row_asks_for_a_combination_the_engine_accepts(model):
    """Each cumulative GPU row's switches pass the engine's checks for a GPU, with its own path on and what it
    replaces off: a row that kept on what its path cannot run beside would only fail on a lent machine."""
    cuda = torch.device("cuda", 0)
    base = rows.model_flags(rows.SIZES["paper"], model, 1, cuda)
    for row, path in rows.PATH_ROWS:
        if rows.row_blocker(row, base, cuda):
            continue
        config = resolve_engine(parse_options(base + rows.row_flags(row, base, cuda), is_train=True), cuda)
        assert getattr(config, path.name) not in (path.off, None, False), (model, row)
        assert all(getattr(config, name) in (False, None) for name in path.replaces), (model, row)


def bench(group, row, median, units=1, reference=False, **info):
    return dict(group=group, stats=dict(median=median, min=median),
                extra_info=dict(info, row=row, units=units, unit="images", reference=reference))


def result(benchmarks, tmp_path, name):
    path = tmp_path / name
    path.write_text(json.dumps(dict(machine_info={"fastp2p": {"device": "x", "size": "small"}},
                                    benchmarks=benchmarks)))
    return str(path)


def test_report_tables_give_each_row_against_its_groups_reference(tmp_path, capsys):
    path = result([bench("train pix2pix bs1", "reference", 0.4, units=2, reference=True),
                   bench("train pix2pix bs1", "amp", 0.1, units=2, engine="bf16", mfu=0.25),
                   bench("kernels norm fwd", "torch", 2e-3, reference=True), bench("kernels norm fwd", "fused", 1e-3)],
                  tmp_path, "run.json")
    assert report.main([path, "--out", str(tmp_path / "run.md")]) == 0
    text = (tmp_path / "run.md").read_text()
    assert "## train" in text and "## kernels" in text
    assert "| train pix2pix bs1 | amp | 100.000 | 20.00 images/s | 4.00 | bf16; MFU 25.0% |" in text
    assert "| kernels norm fwd | fused | 1.000 | 1000.00 images/s | 2.00 |" in text


def test_the_gate_compares_ratios_so_a_slower_machine_passes_and_a_slower_row_fails(tmp_path, capsys):
    rows_of = [("reference", 1.0, True), ("amp", 0.5, False), ("step_cast", 0.25, False)]
    baseline = result([bench("train m bs1", row, t, reference=ref) for row, t, ref in rows_of], tmp_path, "base.json")
    slower_machine = result([bench("train m bs1", row, 3 * t, reference=ref) for row, t, ref in rows_of], tmp_path,
                            "machine.json")
    assert report.main([slower_machine, "--gate", baseline]) == 0
    regressed = result([bench("train m bs1", "reference", 1.0, reference=True), bench("train m bs1", "amp", 0.5),
                        bench("train m bs1", "step_cast", 0.5)], tmp_path, "regressed.json")
    capsys.readouterr()
    assert report.main([regressed, "--gate", baseline]) == 1
    assert "slower: train m bs1 step_cast: x2.000 against the reference, baseline x4.000" in capsys.readouterr().out
    lost = result([bench("train m bs1", "reference", 1.0, reference=True), bench("train m bs1", "amp", 0.5)],
                  tmp_path, "lost.json")
    assert report.main([lost, "--gate", baseline]) == 1
    assert "missing: train m bs1 step_cast" in capsys.readouterr().out
    assert report.main([regressed, "--gate", baseline, "--tolerance", "0.6"]) == 0


def test_a_rows_rounds_are_paired_with_its_references_timed_just_before(tmp_path):
    """Every round of a non-reference row has a round of its group's reference beside it; the reference has none."""
    out = tmp_path / "paired.json"
    run = pytest_run("benchmarks/test_layers.py::test_layer[unet_128-model.model.0-bs1-nchw]",
                     "benchmarks/test_layers.py::test_layer[unet_128-model.model.0-bs1-nhwc]", "--benchmark-only",
                     "--fastp2p-size", "small", "--fastp2p-rounds", "3", "--benchmark-json", str(out))
    assert run.returncode == 0, run.stdout[-3000:]
    reference, channels_last = report.load(out)[1]
    assert reference["extra_info"]["row"] == "nchw" and "x_ref_paired" not in reference["extra_info"]
    info = channels_last["extra_info"]
    assert len(info["x_ref_paired_repeats"]) == 3 and min(info["x_ref_paired_repeats"]) > 0
    assert min(info["x_ref_paired_repeats"]) <= info["x_ref_paired"] <= max(info["x_ref_paired_repeats"])


def test_the_gate_compares_paired_rounds_where_both_runs_have_them(tmp_path, capsys):
    """Load that slowed the reference's fastest round but not the row's (or the other way) moves the fastest-round
    ratio, not the paired one; a row paired in one run only is compared by fastest rounds."""
    def run(row_time, paired, name):
        return result([bench("train m bs1", "reference", 1.0, reference=True),
                       bench("train m bs1", "amp", row_time, **({"x_ref_paired": paired} if paired else {}))],
                      tmp_path, name)

    baseline = run(0.5, 2.0, "base.json")
    assert report.main([run(1.0, 2.0, "loaded.json"), "--gate", baseline]) == 0  # fastest x1 but paired x2
    capsys.readouterr()
    assert report.main([run(0.5, 1.0, "regressed.json"), "--gate", baseline]) == 1
    assert "slower: train m bs1 amp: x1.000 against the reference, baseline x2.000 (paired rounds)" in \
        capsys.readouterr().out
    assert report.main([run(1.0, None, "unpaired.json"), "--gate", baseline]) == 1
    assert "(fastest rounds)" in capsys.readouterr().out


def test_the_committed_cpu_baseline_covers_every_subject_and_says_its_command():
    meta, benchmarks = report.load(BASELINE)
    assert meta["size"] == "small" and "--benchmark-json" in meta["command"] and meta["commit"]
    assert {b["group"].split()[0] for b in benchmarks} == SUBJECTS
    assert all(b["extra_info"]["units"] > 0 and b["stats"]["median"] > 0 for b in benchmarks)
    assert report.gate(benchmarks, benchmarks, 0.0)[1]
    # every timed row of a group with a reference was paired with it (not the interpreter's: no measure)
    unpaired = {(b["group"], b["extra_info"]["row"]) for b in benchmarks if "x_ref_paired" not in b["extra_info"]
                and not b["extra_info"]["reference"] and not b["extra_info"].get("interpreter")}
    assert all(group == "inference host" for group, row in unpaired), sorted(unpaired)
