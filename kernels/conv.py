"""Launch plan and host side of the implicit-GEMM convolution, whose kernels are in conv_kernels.py: the tiles and the
weight gradient's split from the GEMM's sizes and the GPU's; conv_forward, conv_input_grad and conv_weight_grad,
which launch them; combine_stats, which reduces the per-tile statistics in a fixed order; normalize, the norm and
activation applied on their own where no fused conv consumes them."""

import dataclasses
from typing import NamedTuple

import torch
import triton.language as tl

from .conv_kernels import _combine_stats_kernel, _conv_kernel, _conv_wgrad_kernel
from .launch import cdiv, next_power_of_2, target_programs, tiling
from .norm_act import _TILE_BOUNDS, _dense, _strides
from .norm_act_kernels import _forward_apply_kernel
from .pad import memory_format_of

MIN_DOT = 16  # tl.dot's smallest block on a GPU


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    """A Conv2d (or, transposed, a ConvTranspose2d) with one stride and padding for both axes; ``reflect``: the
    padding is a reflection pad before the conv (a convolution's only) rather than zeros."""
    transposed: bool = False
    stride: int = 1
    padding: int = 0
    reflect: bool = False
    output_padding: int = 0

    def output_size(self, size, kernel):
        if self.transposed:
            return (size - 1) * self.stride - 2 * self.padding + kernel + self.output_padding
        return (size + 2 * self.padding - kernel) // self.stride + 1


class Prologue(NamedTuple):
    """The norm and activation a conv applies to its input as it loads it: statistics mean and rstd [GROUPS, C]
    fp32 (GROUPS = N per sample, 1 per channel), the affine weight and bias (None without), negative_slope (None for
    no activation), and, for the backward, whether the statistics are the batch's own."""
    mean: torch.Tensor
    rstd: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    negative_slope: float | None
    per_sample: bool
    use_batch_stats: bool


def _precision(t):
    """fp32 operands multiply in full fp32 ('ieee'), as the reference's convolutions with TF32 off; the setting is
    ignored for 16-bit operands."""
    return "ieee" if t.dtype == torch.float32 else "tf32"


def _index(t):
    """The kernels' index dtype: int32 on a GPU, int64 in the interpreter (see conv_kernels)."""
    return tl.int32 if t.device.type == "cuda" else tl.int64


def _block(size, largest):
    return max(MIN_DOT, min(next_power_of_2(size), largest))


def _prologue_args(prologue, x):
    """Kernel arguments of a prologue (dummies without one): pointers, group stride, slope; and its flags."""
    if prologue is None:
        return (x, x, x, x, 0, 0.0), dict(PROLOGUE=False, HAS_AFFINE=False, HAS_ACT=False)
    mean, rstd, weight, bias, slope, per_sample, _ = prologue
    has_affine = weight is not None
    args = (mean, rstd, weight if has_affine else mean, bias if has_affine else mean,
            mean.shape[1] if per_sample else 0, 0.0 if slope is None else slope)
    return args, dict(PROLOGUE=True, HAS_AFFINE=has_affine, HAS_ACT=slope is not None)


def _conv(x, weight_view, out_channels, kernel, out_size, transposed, stride, padding, reflect, bias=None,
          prologue=None, stats=False, memory_format=None):
    """Launch _conv_kernel; weight_view: (tensor, its strides as [C_out, C_in, KH, KW]). Returns y (in x's memory
    format unless given) and, with stats, the per-tile (mean, m2, count)."""
    N, C_in, H, W = x.shape
    (KH, KW), (OH, OW) = kernel, out_size
    y = torch.empty((N, out_channels, OH, OW), device=x.device, dtype=x.dtype,
                    memory_format=memory_format or memory_format_of(x))
    classes = stride * stride if transposed else 1
    step = stride if transposed else 1
    TW, QW = cdiv(KW, step), cdiv(OW, step)
    rows, k_total = cdiv(OH, step) * QW, cdiv(KH, step) * TW * C_in
    cuda = x.device.type == "cuda"
    # In the interpreter every program runs in Python: large tiles keep the program count small.
    block_m = _block(rows, 128 if cuda else 1024)
    block_n, block_k = _block(out_channels, 128), _block(k_total, 64 if cuda else 256)
    tiles = cdiv(rows, block_m) * classes
    parts = None
    if stats:
        part_mean = torch.empty((N, tiles, out_channels), device=x.device, dtype=torch.float32)
        parts = (part_mean, torch.empty_like(part_mean), torch.empty((N, tiles), device=x.device, dtype=torch.float32))
    prologue_args, flags = _prologue_args(prologue, x)
    weight, w_strides = weight_view
    _conv_kernel[(tiles, cdiv(out_channels, block_n), N)](
        x, weight, x if bias is None else bias, y, *prologue_args[:4], *(parts or (y, y, y)),
        C_in, H, W, out_channels, OH, OW, KH, KW, stride, padding, TW, QW, rows, k_total, *prologue_args[4:],
        *x.stride(), *w_strides, *y.stride(),
        TRANSPOSED=transposed, REFLECT=reflect, HAS_BIAS=bias is not None, STATS=stats, PRECISION=_precision(x),
        INDEX=_index(x),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=8 if block_m * block_n >= 128 * 128 else 4,
        **flags)
    return y, parts


def conv_forward(x, weight, bias, geometry, prologue=None, stats=False):
    """The conv's output [N, C_out, OH, OW] (x's dtype and memory format) of x [N, C_in, H, W], normalized and
    activated on load with a prologue; with stats also the per-tile statistics of the output (see combine_stats).
    The weight and bias may be of another float dtype than x (fp32 under autocast): they are cast on load."""
    KH, KW = weight.shape[2:]
    H, W = x.shape[2:]
    out_size = (geometry.output_size(H, KH), geometry.output_size(W, KW))
    s = weight.stride()
    if geometry.transposed:  # weight [C_in, C_out, KH, KW]
        view, out_channels = (weight, (s[1], s[0], s[2], s[3])), weight.shape[1]
    else:
        view, out_channels = (weight, s), weight.shape[0]
    return _conv(x, view, out_channels, (KH, KW), out_size, geometry.transposed, geometry.stride, geometry.padding,
                 geometry.reflect, bias, prologue, stats)


def conv_input_grad(dy, weight, geometry, input_size, memory_format=None):
    """Gradient of conv_forward's output dy with respect to the conv's input activation, of spatial size input_size
    (H, W), in memory_format (default dy's); with a reflection pad, with respect to the padded activation
    (H + 2 pad, W + 2 pad)."""
    s = weight.stride()
    KH, KW = weight.shape[2:]
    if geometry.transposed:  # a convolution of dy; weight [C_in, C_out] read as [out=C_in, in=C_out]
        return _conv(dy, (weight, s), weight.shape[0], (KH, KW), input_size, False, geometry.stride,
                     geometry.padding, False, memory_format=memory_format)[0]
    pad = 0 if geometry.reflect else geometry.padding
    size = tuple(n + 2 * geometry.padding for n in input_size) if geometry.reflect else input_size
    return _conv(dy, (weight, (s[1], s[0], s[2], s[3])), weight.shape[1], (KH, KW), size, True, geometry.stride,
                 pad, False, memory_format=memory_format)[0]


def conv_weight_grad(x, dy, weight, geometry, prologue=None):
    """Gradient of conv_forward's output dy with respect to the weight, in the weight's shape, strides (so autograd
    copies nothing into a channels-last weight's layout) and dtype; x is the conv's input as it was given (pre-norm
    with a prologue, which is recomputed)."""
    a, b = (x, dy) if geometry.transposed else (dy, x)
    N, C_a, GH, GW = a.shape
    C_b, H_b, W_b = b.shape[1:]
    KH, KW = weight.shape[2:]
    j_total, rows = KH * KW * C_b, GH * GW
    cuda = x.device.type == "cuda"
    block_a, block_j = _block(C_a, 64), _block(j_total, 64 if cuda else 256)
    block_r = 64 if cuda else 512
    base = cdiv(C_a, block_a) * cdiv(j_total, block_j) * N
    # split each sample's rows to fill the GPU; each split's partial sum is its own slice, added in order below
    splits = max(1, min(cdiv(target_programs(x.device), base), cdiv(rows, block_r)))
    chunk = cdiv(cdiv(rows, splits), block_r) * block_r
    splits = cdiv(rows, chunk)
    dweight = torch.empty_like(weight, dtype=torch.float32)  # [C_a, C_b, KH, KW], as either conv's weight
    # one partial sum is written straight into dweight, several into a buffer summed below
    out = dweight[None] if N * splits == 1 else torch.empty((N * splits, C_a, C_b, KH, KW), device=x.device,
                                                            dtype=torch.float32)
    prologue_args, flags = _prologue_args(prologue, x)
    normalized = flags.pop("PROLOGUE")  # the conv's input: a with a transposed conv, else b
    _conv_wgrad_kernel[(cdiv(C_a, block_a), cdiv(j_total, block_j), N * splits)](
        a, b, out, *prologue_args[:4], C_a, GH, GW, C_b, H_b, W_b, KW, geometry.stride, geometry.padding, j_total,
        chunk, splits, *prologue_args[4:], *a.stride(), *b.stride(), *out.stride(),
        REFLECT=geometry.reflect, PROLOGUE_A=normalized and geometry.transposed,
        PROLOGUE_B=normalized and not geometry.transposed, PRECISION=_precision(x), INDEX=_index(x),
        BLOCK_A=block_a, BLOCK_J=block_j, BLOCK_R=block_r, num_warps=4, **flags)
    if N * splits > 1:
        torch.sum(out, 0, out=dweight)
    return dweight.to(weight.dtype)


def combine_stats(parts, per_sample, eps, running=None):
    """(mean, rstd) [GROUPS, C] fp32 (GROUPS = N per sample, else 1; biased variance) from conv_forward's per-tile
    statistics, combined in a fixed order by one launch, so the result does not change from run to run; running:
    (running_mean, running_var, num_batches_tracked, momentum) to update in place, as BatchNorm2d's training does."""
    part_mean, part_m2, part_count = parts
    N, tiles, C = part_mean.shape
    groups, tiles = (N, tiles) if per_sample else (1, N * tiles)
    mean = torch.empty((groups, C), device=part_mean.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_c = _block(C, 128) if part_mean.device.type == "cuda" else next_power_of_2(C)
    _combine_stats_kernel[(cdiv(C, block_c), groups)](
        part_mean, part_m2, part_count, mean, rstd, *(running[:3] if running else (mean, rstd, mean)), tiles, C, eps,
        running[3] if running else 0.0, UPDATE_RUNNING=running is not None, BLOCK_T=min(next_power_of_2(tiles), 64),
        BLOCK_C=block_c)
    return mean, rstd


def normalize(x, mean, rstd, weight, bias, negative_slope):
    """act((x - mean) * rstd * weight + bias) by the fused norm's apply kernel, from statistics [GROUPS, C] (GROUPS:
    N or 1)."""
    x = _dense(x)
    N, C, H, W = x.shape
    groups, rows = mean.shape[0], N * H * W // mean.shape[0]
    y = torch.empty_like(x)
    block_hw, block_c, num_warps = tiling(x, rows, **_TILE_BOUNDS)
    has_affine = weight is not None
    _forward_apply_kernel[(cdiv(C, block_c), groups, cdiv(rows, block_hw))](
        x, y, y, y, y, mean, rstd, weight if has_affine else mean, bias if has_affine else mean, mean,
        C, H * W, rows, H, W, 0, 0, 0, 0, *_strides(x), *_strides(x), *_strides(x),
        0.0 if negative_slope is None else negative_slope, 0.0, HAS_AFFINE=has_affine,
        HAS_ACT=negative_slope is not None, HAS_DROPOUT=False, RESIDUAL=False, WRITE_Y=True, PAD=False,
        RELU_OUT=False, BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps)
    return y
