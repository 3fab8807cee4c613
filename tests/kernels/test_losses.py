"""Fused GAN loss and L1 against the reference's GANLoss (BCEWithLogits / MSE with ones_like or zeros_like
targets, -mean / mean for wgangp) and F.l1_loss: loss, gradients, layouts, dtypes, large logits."""

import pytest
import torch
import torch.nn.functional as F

from fastp2p.kernels import gan_loss, l1_loss
from tests.conftest import requires_cuda
from tests.kernels.utils import DEVICE, TOLERANCES, assert_close_verbose

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

CPU_SHAPES = [(1,), (2, 1, 5, 7), (2, 1, 30, 30), (4, 3, 33, 17)]
CUDA_SHAPES = [(16, 1, 30, 30), (64, 1, 30, 30), (16, 3, 256, 256)]


def reference_gan_loss(pred, target_is_real, mode):
    if mode == "wgangp":
        return -pred.mean() if target_is_real else pred.mean()
    target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
    if mode == "lsgan":
        return F.mse_loss(pred, target)
    return F.binary_cross_entropy_with_logits(pred, target)


def channels_last_if_4d(x, channels_last):
    return x.to(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def check_gan_loss(pred, target_is_real, mode, tolerance):
    atol, rtol = tolerance
    pred_ref = pred.detach().double().requires_grad_()
    pred_fused = pred.detach().clone().requires_grad_()
    loss_ref = reference_gan_loss(pred_ref, target_is_real, mode)
    loss_fused = gan_loss(pred_fused, target_is_real, mode)
    assert loss_fused.dtype == torch.float32 and loss_fused.dim() == 0
    (loss_ref * 3.0).backward()
    (loss_fused * 3.0).backward()  # a grad_output other than 1
    assert pred_fused.grad.stride() == pred.stride() and pred_fused.grad.dtype == pred.dtype
    assert_close_verbose(loss_fused, loss_ref, atol, rtol, "loss")
    assert_close_verbose(pred_fused.grad, pred_ref.grad, atol, rtol, "dpred")


def check_l1(a, b, tolerance):
    atol, rtol = tolerance
    a_ref, b_ref = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    a_fused, b_fused = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    (F.l1_loss(a_ref, b_ref) * 2.0).backward()
    loss = l1_loss(a_fused, b_fused)
    (loss * 2.0).backward()
    assert loss.dtype == torch.float32
    assert_close_verbose(loss, F.l1_loss(a_ref, b_ref), atol, rtol, "loss")
    assert_close_verbose(a_fused.grad, a_ref.grad, atol, rtol, "da")
    assert_close_verbose(b_fused.grad, b_ref.grad, atol, rtol, "db")


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "wgangp"])
@pytest.mark.parametrize("target_is_real", [True, False], ids=["real", "fake"])
def test_gan_loss_matches_reference(shape, dtype, channels_last, mode, target_is_real):
    pred = channels_last_if_4d(torch.randn(shape, device=DEVICE).to(dtype) * 3, channels_last)
    check_gan_loss(pred, target_is_real, mode, TOLERANCES[dtype])


@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "wgangp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gan_loss_large_logits_stay_finite(mode, dtype):
    pred = (torch.tensor([-1e4, -300.0, -30.0, 0.0, 30.0, 300.0, 1e4], device=DEVICE)).to(dtype)
    for target_is_real in (True, False):
        check_gan_loss(pred.view(1, 1, 1, -1), target_is_real, mode, TOLERANCES[dtype])


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("layouts", ["nchw-nchw", "nhwc-nhwc", "nhwc-nchw"])
def test_l1_matches_reference(shape, dtype, layouts):
    layout_a, layout_b = layouts.split("-")
    a = channels_last_if_4d(torch.randn(shape, device=DEVICE).to(dtype), layout_a == "nhwc")
    b = channels_last_if_4d(torch.randn(shape, device=DEVICE).to(dtype), layout_b == "nhwc")
    check_l1(a, b, TOLERANCES[dtype])


def test_l1_equal_inputs_have_zero_gradient():
    a = torch.randn(2, 3, 4, 4, device=DEVICE)
    check_l1(a, a.clone(), TOLERANCES[torch.float32])


def test_l1_gradient_only_where_needed():
    a = torch.randn(2, 3, 4, 4, device=DEVICE, requires_grad=True)
    b = torch.randn(2, 3, 4, 4, device=DEVICE)
    l1_loss(a, b).backward()
    assert a.grad is not None and b.grad is None


@requires_cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "wgangp"])
def test_real_shapes_on_cuda(shape, dtype, mode):
    pred = torch.randn(shape, device=DEVICE).to(dtype).to(memory_format=torch.channels_last)
    check_gan_loss(pred, True, mode, TOLERANCES[dtype])
    check_l1(pred, torch.randn(shape, device=DEVICE).to(dtype), TOLERANCES[dtype])
