"""benchmarks.count_ops counts an iteration's kernels on the CPU: every row is counted and written, the fused
kernels show up as Triton launches (counted, not run), and the fast path launches fewer kernels."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_small_count_writes_rows_and_the_fast_path_launches_fewer(tmp_path):
    subprocess.run([sys.executable, "-m", "benchmarks.count_ops", "--small", "--models", "cycle_gan", "--rows",
                    "reference", "fused_kernels", "batch_passes", "--out", str(tmp_path)], check=True,
                   capture_output=True, timeout=600, cwd=ROOT)
    (result,) = tmp_path.glob("ops_*.json")
    data = json.loads(result.read_text())
    assert {"device", "torch", "commit", "command"} <= set(data) and data["small"]
    reference, fused, batched = data["rows"]
    assert [row["row"] for row in data["rows"]] == ["reference", "fused_kernels", "batch_passes"]
    assert reference["triton"] == 0
    assert reference["counts"]["convolution"] == reference["counts"]["convolution_backward"]
    assert fused["counts"]["triton:forward_apply_kernel"] > 0 and "native_batch_norm" not in fused["counts"]
    assert reference["total"] > fused["total"] > batched["total"]
    assert batched["counts"]["convolution"] < fused["counts"]["convolution"]  # batched passes: fewer conv calls
    assert result.with_suffix(".md").exists()
