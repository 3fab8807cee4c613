"""FusedReflectionPad2d against F.pad(mode='reflect'): values, gradients, memory format, errors. Without CUDA it
runs in Triton's interpreter on small shapes; the ResNet generator's real pad shapes run only on a GPU."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastp2p.kernels import FusedReflectionPad2d
from tests.conftest import requires_cuda
from tests.kernels.utils import DEVICE, TOLERANCES, assert_close_verbose

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

# (shape, (left, right, top, bottom)): the generator's pads 1 and 3, asymmetric pads, a zero pad, and axes so
# short that an element is read through both mirrors (W = 4 with pad 3 on each side)
CPU_CASES = [
    ((2, 3, 5, 7), (1, 1, 1, 1)),
    ((1, 4, 4, 4), (3, 3, 3, 3)),
    ((2, 5, 6, 9), (2, 1, 0, 3)),
    ((1, 16, 8, 8), (3, 3, 3, 3)),
    ((1, 1, 2, 2), (1, 1, 1, 1)),
    ((1, 130, 3, 5), (2, 4, 2, 1)),  # more channels than one tile
]
CUDA_CASES = [((1, 3, 256, 256), (3, 3, 3, 3)), ((1, 256, 64, 64), (1, 1, 1, 1)), ((16, 64, 256, 256), (3, 3, 3, 3)),
              ((16, 256, 64, 64), (1, 1, 1, 1)),
              ((256, 2, 256, 256), (3, 3, 3, 3))]  # N x H_out over 65535 (test_grid_limits)


def memory_format(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def check_against_reference(shape, padding, dtype, channels_last):
    """Fused pad in dtype against F.pad in fp64 on NCHW copies: output exact, gradient within dtype tolerance."""
    x = torch.randn(shape, device=DEVICE).to(dtype).to(memory_format=memory_format(channels_last))
    x_ref = x.detach().double().contiguous().requires_grad_()
    x_fused = x.detach().clone().requires_grad_()
    y_ref = F.pad(x_ref, padding, mode="reflect")
    y_fused = FusedReflectionPad2d(padding)(x_fused)
    grad = torch.randn(y_ref.shape, device=DEVICE).to(dtype)
    y_ref.backward(grad.double())
    y_fused.backward(grad.to(memory_format=memory_format(channels_last)))

    assert y_fused.dtype == dtype and x_fused.grad.dtype == dtype
    assert y_fused.is_contiguous(memory_format=memory_format(channels_last)), "output must keep the input's layout"
    assert x_fused.grad.is_contiguous(memory_format=memory_format(channels_last)), "dx must keep the input's layout"
    assert torch.equal(y_fused.double(), y_ref.detach()), "padding copies values: it must be exact"
    atol, rtol = TOLERANCES[dtype]
    assert_close_verbose(x_fused.grad, x_ref.grad, atol, rtol, "dx")


@pytest.mark.parametrize("shape, padding", CPU_CASES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_fp32_matches_reference(shape, padding, channels_last):
    check_against_reference(shape, padding, torch.float32, channels_last)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_low_precision_matches_reference(dtype, channels_last):
    check_against_reference((2, 8, 6, 6), (3, 3, 3, 3), dtype, channels_last)


def test_gradient_reads_a_mismatched_layout():
    """Autograd may hand backward an NCHW gradient for a channels-last input; dx keeps the input's layout."""
    x = torch.randn(1, 8, 5, 5, device=DEVICE).to(memory_format=torch.channels_last).requires_grad_()
    y = FusedReflectionPad2d(2)(x)
    grad = torch.randn(y.shape, device=DEVICE)  # NCHW
    y.backward(grad)
    x_ref = x.detach().clone().requires_grad_()
    F.pad(x_ref, (2, 2, 2, 2), mode="reflect").backward(grad)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert_close_verbose(x.grad, x_ref.grad, *TOLERANCES[torch.float32], "dx")


@pytest.mark.parametrize("shape, padding, message", [
    ((1, 2, 3, 3), (3, 3, 1, 1), "smaller than the input"),
    ((1, 2, 3, 8), (1, 1, 3, 0), "smaller than the input"),
    ((1, 2, 4, 4), (-1, 1, 1, 1), "non-negative"),
    ((2, 4, 4), (1, 1, 1, 1), "4-D"),
], ids=["pad-wider", "pad-taller", "negative", "3-d"])
def test_bad_padding_raises(shape, padding, message):
    with pytest.raises(ValueError, match=message):
        FusedReflectionPad2d(padding)(torch.randn(shape, device=DEVICE))


def test_module_replaces_reflection_pad2d():
    reference = nn.ReflectionPad2d((1, 2, 3, 0))
    fused = FusedReflectionPad2d.from_module(reference)
    assert fused.padding == (1, 2, 3, 0) and FusedReflectionPad2d(3).padding == (3, 3, 3, 3)
    assert list(fused.state_dict()) == list(reference.state_dict()) == []
    x = torch.randn(1, 2, 4, 4, device=DEVICE)
    assert torch.equal(fused(x), reference(x))


@requires_cuda
@pytest.mark.parametrize("shape, padding", CUDA_CASES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_real_shapes_on_cuda(shape, padding, dtype, channels_last):
    check_against_reference(shape, padding, dtype, channels_last)
