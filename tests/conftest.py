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


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
