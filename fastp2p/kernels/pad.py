"""Reflection padding that keeps the input's memory format, forward and backward.

PyTorch's CUDA ``reflection_pad2d`` makes its input contiguous (NCHW) and returns NCHW, and its backward
zero-fills an NCHW gradient and scatters into it with atomics. In a channels-last ResNet generator, whose
20 pads per forward sit between convolutions that want NHWC, every pad therefore adds layout copies in and
out, forward and backward: they are most of the strided-copy kernels of a CycleGAN iteration in the H100
profile (benchmarks/results/profile_h100_20261125.md). Here the output has the input's layout, and the
backward is a gather: each input element sums the (at most 3 x 3) padded positions that reflect onto it,
so every element is written once, with no zero fill, no atomics and a deterministic result.
"""

import torch
import triton
import triton.language as tl
from torch import nn

from .launch import cdiv, grid, next_power_of_2, sized_for_gpu, tiling

# launch.tiling's bounds for a row's [BLOCK_W, BLOCK_C] tile: 128 channels when they are inner, else up to 256 columns
_TILE_BOUNDS = dict(min_channels=128, max_channels=128, max_length=256)
INTERPRETER_TILE = 1 << 16  # elements of the backward's tile in the interpreter, whose cost is mostly per program


@triton.jit
def reflect(i, size):
    """Index into an axis of `size` that padded index i (relative to the first real element) reads."""
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= size, 2 * (size - 1) - i, i)


@triton.jit
def _row_tile(rows_per_sample, width, C, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile: sample n, row r of it, BLOCK_W columns x BLOCK_C channels, and their mask."""
    row, pid_c, pid_w = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # row = n * rows_per_sample + r
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_w = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (offs_w < width)[:, None] & (offs_c < C)[None, :]
    return (row // rows_per_sample).to(tl.int64), row % rows_per_sample, offs_w, offs_c, mask


@triton.jit
def pad_forward_kernel(
    x_ptr,  # [N, C, H, W] through strides
    y_ptr,  # [N, C, H + top + bottom, W + left + right] through its own strides
    C, H, W, H_out, W_out, top, left,
    stride_xn, stride_xc, stride_xh, stride_xw, stride_yn, stride_yc, stride_yh, stride_yw,
    BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, oh, offs_w, offs_c, mask = _row_tile(H_out, W_out, C, BLOCK_W, BLOCK_C)
    ih = reflect(oh - top, H)
    iw = reflect(offs_w - left, W)
    src = x_ptr + n * stride_xn + ih * stride_xh + iw[:, None] * stride_xw + offs_c[None, :] * stride_xc
    dst = y_ptr + n * stride_yn + oh * stride_yh + offs_w[:, None] * stride_yw + offs_c[None, :] * stride_yc
    tl.store(dst, tl.load(src, mask=mask), mask=mask)


@triton.jit
def _padded_row_sum(row_ptr, row_ok, ow_direct, ow_low, low_ok, ow_high, high_ok, offs_c, stride_w, stride_c, mask):
    """Sum, in fp32, of the gradient at the (up to 3) padded columns of one padded row that read each element.

    row_ptr: [BLOCK] pointers to each element's padded row; row_ok: [BLOCK], whether that row reads it at all.
    """
    cols = row_ptr[:, None] + offs_c[None, :] * stride_c
    m = mask & row_ok[:, None]
    total = tl.load(cols + ow_direct[:, None] * stride_w, mask=m, other=0.0).to(tl.float32)
    total += tl.load(cols + ow_low[:, None] * stride_w, mask=m & low_ok[:, None], other=0.0).to(tl.float32)
    total += tl.load(cols + ow_high[:, None] * stride_w, mask=m & high_ok[:, None], other=0.0).to(tl.float32)
    return total


@triton.jit
def reflected_grad(dy_ptr, h, w, H, W, top, bottom, left, right, offs_c, stride_h, stride_w, stride_c, mask):
    """fp32 gradient of input elements (h, w) ([BLOCK] each) of an [H, W] plane padded by (left, right, top,
    bottom): the sum of dy over the (at most 3 x 3) padded positions that read each of them.

    dy_ptr points to each element's padded sample (a pointer, or [BLOCK] of them); mask is [BLOCK, BLOCK_C].
    An element at i of an axis padded by (before, after) is read at i + before, at its mirror image across the
    leading border (before - i, for 1 <= i <= before) and across the trailing one (before + 2 (size-1) - i, for
    size-1-after <= i <= size-2). Both mirrors can apply when the axis is short.
    """
    ow_low, ow_high = left - w, left + 2 * (W - 1) - w
    low_ok = (w >= 1) & (w <= left)
    high_ok = (w >= W - 1 - right) & (w <= W - 2)
    total = _padded_row_sum(dy_ptr + (h + top) * stride_h, h >= 0, w + left, ow_low, low_ok, ow_high, high_ok,
                            offs_c, stride_w, stride_c, mask)
    total += _padded_row_sum(dy_ptr + (top - h) * stride_h, (h >= 1) & (h <= top), w + left, ow_low, low_ok,
                             ow_high, high_ok, offs_c, stride_w, stride_c, mask)
    total += _padded_row_sum(dy_ptr + (top + 2 * (H - 1) - h) * stride_h, (h >= H - 1 - bottom) & (h <= H - 2),
                             w + left, ow_low, low_ok, ow_high, high_ok, offs_c, stride_w, stride_c, mask)
    return total


@triton.jit
def pad_backward_kernel(
    dy_ptr,  # [N, C, H_out, W_out] through strides
    dx_ptr,  # [N, C, H, W] through its own strides
    C, H, W, top, bottom, left, right,
    stride_dyn, stride_dyc, stride_dyh, stride_dyw, stride_dxn, stride_dxc, stride_dxh, stride_dxw,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx of BLOCK_H rows (1 on a GPU) x BLOCK_W columns x BLOCK_C channels of one sample."""
    pid_h, pid_c, pid_w = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # pid_h = n * row blocks + block
    row_blocks = tl.cdiv(H, BLOCK_H)
    n = (pid_h // row_blocks).to(tl.int64)
    offs = tl.arange(0, BLOCK_H * BLOCK_W)
    h = (pid_h % row_blocks) * BLOCK_H + offs // BLOCK_W
    offs_w = pid_w * BLOCK_W + offs % BLOCK_W
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = ((h < H) & (offs_w < W))[:, None] & (offs_c < C)[None, :]
    total = reflected_grad(dy_ptr + n * stride_dyn, h, offs_w, H, W, top, bottom, left, right, offs_c,
                            stride_dyh, stride_dyw, stride_dyc, mask)
    dst = (dx_ptr + n * stride_dxn + h[:, None] * stride_dxh + offs_w[:, None] * stride_dxw
           + offs_c[None, :] * stride_dxc)
    tl.store(dst, total.to(dx_ptr.dtype.element_ty), mask=mask)


def check_padding(x, padding):
    """Reject what F.pad(x, padding, mode='reflect') rejects, with the reason."""
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D [N, C, H, W] input, got shape {tuple(x.shape)}")
    left, right, top, bottom = padding
    _, _, H, W = x.shape
    if min(padding) < 0 or max(left, right) >= W or max(top, bottom) >= H:
        raise ValueError(f"reflection padding {tuple(padding)} (left, right, top, bottom) must be non-negative and "
                         f"smaller than the input's width and height, got input shape {tuple(x.shape)}")


def memory_format_of(x):
    """channels_last for a channels-last input, else contiguous: the layout the output and dx are given."""
    nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format


def reflection_pad_forward(x, padding):
    """F.pad(x, padding, mode='reflect') for 4-D x, padding = (left, right, top, bottom), in x's memory format."""
    check_padding(x, padding)
    left, right, top, bottom = padding
    N, C, H, W = x.shape
    H_out, W_out = H + top + bottom, W + left + right
    y = torch.empty((N, C, H_out, W_out), device=x.device, dtype=x.dtype, memory_format=memory_format_of(x))
    block_w, block_c, num_warps = tiling(y, W_out, **_TILE_BOUNDS)
    pad_forward_kernel[grid(N * H_out, cdiv(C, block_c), cdiv(W_out, block_w))](
        x, y, C, H, W, H_out, W_out, top, left, *x.stride(), *y.stride(),
        BLOCK_W=block_w, BLOCK_C=block_c, num_warps=num_warps)
    return y


def reflection_pad_backward(dy, padding, input_shape, memory_format):
    """Gradient of reflection_pad_forward with respect to its input of `input_shape`, in `memory_format`."""
    left, right, top, bottom = padding
    N, C, H, W = input_shape
    dx = torch.empty(input_shape, device=dy.device, dtype=dy.dtype, memory_format=memory_format)
    block_w, block_c, num_warps = tiling(dx, W, **_TILE_BOUNDS)
    # a row per program on a GPU; in the interpreter as many as fit a tile (its cost is mostly per program)
    block_h = 1 if sized_for_gpu(dy.device) else min(next_power_of_2(H),
                                                     max(1, INTERPRETER_TILE // (block_w * block_c)))
    pad_backward_kernel[grid(N * cdiv(H, block_h), cdiv(C, block_c), cdiv(W, block_w))](
        dy, dx, C, H, W, top, bottom, left, right, *dy.stride(), *dx.stride(),
        BLOCK_H=block_h, BLOCK_W=block_w, BLOCK_C=block_c, num_warps=num_warps)
    return dx


class ReflectionPadFunction(torch.autograd.Function):
    """Autograd wrapper of reflection_pad_forward/reflection_pad_backward (keeps no tensor for backward)."""

    @staticmethod
    def forward(ctx, x, padding):
        ctx.padding, ctx.input_shape, ctx.memory_format = padding, x.shape, memory_format_of(x)
        return reflection_pad_forward(x, padding)

    @staticmethod
    def backward(ctx, dy):
        return reflection_pad_backward(dy, ctx.padding, ctx.input_shape, ctx.memory_format), None


class FusedReflectionPad2d(nn.Module):
    """nn.ReflectionPad2d that keeps channels-last tensors channels-last (no state, so checkpoints are unchanged)."""

    def __init__(self, padding):
        super().__init__()
        self.padding = tuple(padding) if isinstance(padding, (tuple, list)) else (padding,) * 4

    @classmethod
    def from_module(cls, pad):
        return cls(pad.padding)

    def forward(self, x):
        return ReflectionPadFunction.apply(x, self.padding)

    def extra_repr(self):
        return f"{self.padding}"
