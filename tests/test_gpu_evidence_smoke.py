"""benchmarks/gpu_evidence.py, the one command a GPU loan runs, cannot rot between loans: its dry run runs every
stage on the CPU at the smallest sizes, and the GPU stages ask only for rows and tests that exist."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_evidence  # noqa: E402

from benchmarks import rows  # noqa: E402


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_writes_its_results(tmp_path):
    out = tmp_path / "evidence"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_evidence.py"), "--dry_run", "--out",
                          str(out), "--archive", str(tmp_path / "evidence.tar.gz")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == ["doctor", "cuda_tests", "goals", "profile", "adam",
                                                          "norms_bs1"]
    assert all(re.search(r": \[0(, 0)*\] after", line) for line in summary), summary  # each command's exit code
    assert "tests collected" in (out / "cuda_tests.log").read_text()
    doctor = json.loads((out / "doctor_pix2pix.json").read_text())
    assert doctor["environment"]["torch"] and doctor["paths"] and doctor["passed"], doctor  # environment, paths, verdict
    def rows_of(path):
        return [bench["extra_info"]["row"] for bench in json.loads(path.read_text())["benchmarks"]]

    assert rows_of(out / "goals_pix2pix.json") == ["reference", "step_cast"]
    assert json.loads((out / "profile" / "profile_categories.json").read_text())[0]["model"] == "pix2pix"
    assert rows_of(out / "adam.json") == ["adam", "adam+step_copy", "triton_adam", "triton_adam+step_copy"]
    norms = json.loads((out / "norms_bs1.json").read_text())["benchmarks"]
    assert {bench["extra_info"]["op"] for bench in norms} == {"norm_act"}
    assert {bench["group"].split()[1].split("-")[-1] for bench in norms} == {"nhwc", "nchw"}
    assert json.loads((out / "env.json").read_text())["dry_run"] is True
    assert (out / "goals.md").read_text().startswith("# Training goals")  # the CPU rows meet none of them
    assert (tmp_path / "evidence.tar.gz").stat().st_size > 0


def test_gpu_stages_ask_for_rows_that_exist_and_fit_nine_minutes(tmp_path):
    args = gpu_evidence.argparse.Namespace(out=str(tmp_path), dry_run=False)
    stages = gpu_evidence.stages(args)
    assert sum(seconds for _, seconds, _ in stages) <= 9 * 60 - 30  # the install and the archive fit beside them
    for _, _, commands in stages:
        for command in commands:
            if "--fastp2p-rows" in command:
                asked = command[command.index("--fastp2p-rows") + 1:]
                assert set(asked) <= set(rows.ROW_NAMES), asked
            if "--config" in command:
                configs = command[command.index("--config") + 1:command.index("--out")]
                assert all(config.split(":")[2] in rows.ROW_NAMES for config in configs), configs
