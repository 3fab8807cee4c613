"""PatchGAN loss reductions: GAN loss against a constant target, and L1, each in one pass, forward and backward.

The reference builds ``ones_like``/``zeros_like`` targets and runs several small kernels per call (3 calls per
pix2pix iteration, 6 per CycleGAN one). Here one kernel reads the prediction once and writes both the per-program
share of the mean loss and d(loss)/d(prediction); backward only scales that gradient by grad_output. Sums are fp32
whatever the input dtype, and inputs of any strides (NCHW, channels-last, mismatched between a and b) are indexed
in place. FusedGANLoss and FusedL1Loss are the modules the fast engine puts in place of a model's criteria.
"""

import torch
import triton
import triton.language as tl
from torch import nn

from .launch import cdiv, grid, target_programs

GAN_MODES = {"vanilla": 0, "lsgan": 1, "wgangp": 2}
L1_MODE = 3
BLOCK = 1024


@triton.jit
def _strided_offsets(idx, S1, S2, S3, stride0, stride1, stride2, stride3):
    """Memory offsets of logical row-major indices idx of a [S0, S1, S2, S3] tensor with the given strides."""
    i3 = idx % S3
    i2 = (idx // S3) % S2
    i1 = (idx // (S3 * S2)) % S1
    i0 = idx // (S3 * S2 * S1)
    return i0.to(tl.int64) * stride0 + i1 * stride1 + i2 * stride2 + i3 * stride3


@triton.jit
def loss_kernel(
    a_ptr,  # [S0, S1, S2, S3] prediction (GAN modes) or first L1 input, through strides, any float dtype
    b_ptr,  # [S0, S1, S2, S3] second L1 input through its own strides, read only when MODE == 3
    grad_ptr,  # [S0, S1, S2, S3] through its own strides, out when WRITE_GRAD: d(mean loss)/da
    partial_ptr,  # [num_programs] fp32, out: each program's share of the mean loss
    numel, S1, S2, S3,
    stride_a0, stride_a1, stride_a2, stride_a3, stride_b0, stride_b1, stride_b2, stride_b3,
    stride_g0, stride_g1, stride_g2, stride_g3,
    target, inv_numel,
    MODE: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    step = tl.num_programs(0) * BLOCK
    total = tl.zeros([BLOCK], tl.float32)
    for start in range(pid * BLOCK, numel, step):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < numel
        x = tl.load(a_ptr + _strided_offsets(idx, S1, S2, S3, stride_a0, stride_a1, stride_a2, stride_a3),
                    mask=mask, other=0.0).to(tl.float32)
        if MODE == 0:  # BCE with logits: max(x, 0) - x t + log(1 + exp(-|x|)), stable for any |x|
            e = tl.exp(-tl.abs(x))
            loss = tl.maximum(x, 0.0) - x * target + tl.log(1.0 + e)
            grad = tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)) - target
        elif MODE == 1:  # squared error
            diff = x - target
            loss = diff * diff
            grad = 2.0 * diff
        elif MODE == 2:  # Wasserstein critic: target is -1 for real (loss -x), +1 for fake (loss x)
            loss = x * target
            grad = tl.full([BLOCK], 1.0, tl.float32) * target
        else:  # L1: |a - b|, gradient sign(a - b) with sign(0) = 0 as in PyTorch
            b = tl.load(b_ptr + _strided_offsets(idx, S1, S2, S3, stride_b0, stride_b1, stride_b2, stride_b3),
                        mask=mask, other=0.0).to(tl.float32)
            diff = x - b
            loss = tl.abs(diff)
            grad = tl.where(diff > 0, 1.0, tl.where(diff < 0, -1.0, 0.0))
        total += tl.where(mask, loss, 0.0)
        if WRITE_GRAD:
            offs = _strided_offsets(idx, S1, S2, S3, stride_g0, stride_g1, stride_g2, stride_g3)
            tl.store(grad_ptr + offs, (grad * inv_numel).to(grad_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(total, axis=0) * inv_numel)


def _as_4d(t):
    """A view with leading size-1 axes, so one kernel serves 1-D to 4-D inputs without copying."""
    if t.dim() > 4:
        raise ValueError(f"at most 4 dimensions are supported, got shape {tuple(t.shape)}")
    return t[(None,) * (4 - t.dim())]


def gan_target(mode, target_is_real, real_label=1.0, fake_label=0.0):
    """The constant the kernel compares against: the label for vanilla/lsgan, the sign of the loss for wgangp."""
    if mode not in GAN_MODES:
        raise ValueError(f"gan mode must be one of {tuple(GAN_MODES)}, got {mode!r}")
    if mode == "wgangp":
        return -1.0 if target_is_real else 1.0
    return real_label if target_is_real else fake_label


def _launch(a, b, mode, target, write_grad):
    """One pass of loss_kernel: the fp32 mean loss and, if asked, its gradient with respect to a."""
    a4, b4 = _as_4d(a), _as_4d(b)
    grad = torch.empty_like(a) if write_grad else None
    grad4 = _as_4d(grad) if write_grad else a4
    programs = max(1, min(cdiv(a.numel(), BLOCK), target_programs(a.device, waves=2)))
    partials = torch.empty(programs, device=a.device, dtype=torch.float32)
    loss_kernel[grid(programs)](
        a4, b4, grad4, partials, a.numel(), *a4.shape[1:], *a4.stride(), *b4.stride(), *grad4.stride(),
        float(target), 1.0 / max(a.numel(), 1), MODE=mode, WRITE_GRAD=write_grad, BLOCK=BLOCK)
    loss = partials.reshape(()) if programs == 1 else partials.sum()
    return loss, grad


def gan_loss_forward(pred, mode, target, write_grad=True):
    """(fp32 scalar mean loss, d(loss)/d(pred) in pred's dtype and strides or None) in one pass over pred."""
    return _launch(pred, pred, GAN_MODES[mode], target, write_grad)


def l1_loss_forward(a, b, write_grad=True):
    """(fp32 scalar mean |a - b|, d(loss)/da in a's dtype and strides or None); d(loss)/db is its negative."""
    if a.shape != b.shape:
        raise ValueError(f"l1 loss needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return _launch(a, b, L1_MODE, 0.0, write_grad)


class GanLossFunction(torch.autograd.Function):
    """Mean GAN loss of pred against a constant target; the gradient is computed in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, pred, mode, target):
        loss, grad = gan_loss_forward(pred, mode, target, write_grad=ctx.needs_input_grad[0])
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output, None, None


class L1LossFunction(torch.autograd.Function):
    """Mean |a - b| with gradients to both inputs from one stored sign map."""

    @staticmethod
    def forward(ctx, a, b):
        write_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss, grad = l1_loss_forward(a, b, write_grad=write_grad)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        grad_a = grad * grad_output
        return (grad_a if ctx.needs_input_grad[0] else None), (-grad_a if ctx.needs_input_grad[1] else None)


def gan_loss(pred, target_is_real, mode="lsgan", real_label=1.0, fake_label=0.0):
    """The reference GANLoss(mode)(pred, target_is_real) as one fused op: an fp32 scalar."""
    return GanLossFunction.apply(pred, mode, gan_target(mode, target_is_real, real_label, fake_label))


def l1_loss(a, b):
    """F.l1_loss(a, b) (mean) as one fused op: an fp32 scalar."""
    return L1LossFunction.apply(a, b)


class FusedGANLoss(nn.Module):
    """GANLoss(gan_mode)(prediction, target_is_real) as one Triton reduction that also writes the gradient."""

    def __init__(self, gan_mode):
        super().__init__()
        self.gan_mode = gan_mode

    def forward(self, prediction, target_is_real):
        return gan_loss(prediction, target_is_real, mode=self.gan_mode)


class FusedL1Loss(nn.Module):
    """nn.L1Loss() (mean) as one Triton reduction."""

    def forward(self, a, b):
        return l1_loss(a, b)
