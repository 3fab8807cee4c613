"""The kernels compile for an H100 (sm_90) with Triton's real compiler, also on a machine without a GPU.

The interpreter runs the kernels' Python and misses what only the compiler checks (types of loop-carried
values, constexpr misuse, shapes that are not powers of 2). This runs compile_for_gpu.py in a subprocess
without TRITON_INTERPRET, with a fresh Triton cache so that nothing is taken from an earlier compile. The
script shares the compiles among worker processes (one per core); the subprocess gets a process group of
its own, so that none of them (nor a ptxas they started) outlives the test, even on a timeout.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "compile_for_gpu.py"
TIMEOUT = 600  # well below pytest's per-test timeout, so that this one kills the process group first


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def kill_group(pgid):
    """SIGKILL whatever is left in the process group; True if anything was."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def left_running(pgid, grace=10.0):
    """Whether anything of the process group still runs `grace` seconds after its leader exited (the workers have
    exited by then, and multiprocessing's resource tracker a moment after the script); what does is killed."""
    deadline = time.monotonic() + grace
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return kill_group(pgid)
        time.sleep(0.05)
    return False


def compile_for_gpu(tmp_path, *args):
    """Run compile_for_gpu.py with ``args``; its stdout, after checking that it passed and left nothing running."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    process = subprocess.Popen([sys.executable, str(SCRIPT), *args], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_group(process.pid)
        stdout, stderr = process.communicate()
        pytest.fail(f"compile_for_gpu.py ran past {TIMEOUT} s\n{stdout[-4000:]}{stderr[-4000:]}")
    except BaseException:
        kill_group(process.pid)
        raise
    left_behind = left_running(process.pid)  # the script waits for its workers: none should be left
    assert process.returncode == 0, stdout[-4000:] + stderr[-4000:]
    assert not left_behind, "compile_for_gpu.py exited and left processes of its group running"
    assert " 0 failures" in stdout, stdout[-4000:] + stderr[-4000:]
    return stdout


def test_one_kernel_compiles_for_sm90(tmp_path):
    """The quick loop's share: the compiler and ptxas bundled with Triton work here, on the smallest kernel."""
    assert "compiled 1 specializations" in compile_for_gpu(tmp_path, "--only", "pad_forward_kernel fp32", "--jobs", "1")


@pytest.mark.slow
def test_every_kernel_specialization_compiles_for_sm90(tmp_path):
    compile_for_gpu(tmp_path)
