"""The kernels compile for an H100 (sm_90) with Triton's real compiler, also on a machine without a GPU.

The interpreter runs the kernels' Python and misses what only the compiler checks (types of loop-carried
values, constexpr misuse, shapes that are not powers of 2). This runs compile_for_gpu.py in a subprocess
without TRITON_INTERPRET, with a fresh Triton cache so that nothing is taken from an earlier compile.
"""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "compile_for_gpu.py"


def test_every_kernel_specialization_compiles_for_sm90(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    run = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "0 failures" in run.stdout
