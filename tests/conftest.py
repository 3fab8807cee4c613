"""Shared test setup.

Without CUDA the Triton kernels run in Triton's interpreter, which must be switched on before any
``@triton.jit`` function is defined, that is before ``fastp2p.kernels`` is first imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


@pytest.fixture
def shared_data():
    """The real facades sets beside the checkout (../shared/data); tests using it skip in a user's clone."""
    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real datasets not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def single_threaded():
    """One intra-op thread: the suite's tensors are small, and on a 2-core machine two threads that wait
    on each other (or on another process) made small-tensor tests 10-15x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


CUDA_REASON = "needs a CUDA device"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)


def pytest_collection_modifyitems(items):
    """Every test that needs CUDA carries the ``cuda`` marker, so ``-m cuda`` picks exactly the GPU checks and
    ``-m "not cuda"`` leaves them out, without each test naming the marker beside its skip."""
    for item in items:
        if any(mark.kwargs.get("reason") == CUDA_REASON for mark in item.iter_markers("skipif")):
            item.add_marker(pytest.mark.cuda)
