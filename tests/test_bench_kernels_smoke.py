"""The kernel benchmark's --smoke mode runs end to end (on CPU in Triton's interpreter) and writes its results."""

import json
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_kernels.py"


def test_smoke_mode_writes_json_and_markdown(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--dtypes", "float32", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=300)
    (result,) = tmp_path.glob("kernels_*_smoke.json")
    data = json.loads(result.read_text())
    assert {"device", "torch", "triton", "commit", "command", "copy_gbps"} <= set(data)
    assert {row["op"] for row in data["rows"]} == {"norm_act", "unet_skip", "reflection_pad", "gan_loss", "l1_loss"}
    assert all(row["fused_ms"] > 0 and row["torch_ms"] > 0 for row in data["rows"])
    norms = [row for row in data["rows"] if row["op"] == "norm_act"]
    assert all(row["plan"]["programs"] >= row["plan"]["splits"] >= 1 for row in norms)  # the plan that was timed
    assert "combine loads |" in result.with_suffix(".md").read_text()


def test_without_cuda_it_asks_for_smoke_mode(tmp_path):
    if torch.cuda.is_available():
        return
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode != 0 and "--smoke" in run.stderr
