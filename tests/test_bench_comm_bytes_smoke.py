"""benchmarks/bench_comm_bytes.py counts, through its comm hook, exactly the trained parameters' bytes."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_counted_bytes_are_the_parameters_in_the_wire_precision(tmp_path):
    out = tmp_path / "bytes.md"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_comm_bytes.py"), "--models",
                             "cycle_gan", "--iters", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = out.read_text()
    # 2 ResNet-9 generators of 11,378,179 parameters, 2 PatchGANs of 2,764,737: 28,285,832, once an iteration
    assert "| cycle_gan | 1 | fp32 | all | 28,285,832 | 113,143,328 | yes |" in table
    assert "| cycle_gan | 1 | bf16 | all | 28,285,832 | 56,571,664 | yes |" in table
    assert "NO" not in table
