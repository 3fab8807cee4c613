"""Launch plan and host side of the implicit-GEMM convolution, whose kernels are in conv_kernels.py: the tiles and the
weight gradient's split from the GEMM's sizes and the GPU's; conv_forward (with the statistics of its output, as
the Statistics of the norm after it ask), conv_input_grad (with the sums of its input norm's backward) and
conv_weight_grad, which launch them; normalize, the norm and activation applied on their own where no fused conv
consumes them."""

import dataclasses
from typing import NamedTuple

import torch
import triton.language as tl

from .conv_kernels import conv_kernel, conv_wgrad_kernel
from .launch import cdiv, grid, next_power_of_2, sized_for_gpu, target_programs, tickets, tiling
from .norm_act import NORM_TILE_BOUNDS, dense, flat_strides
from .norm_act_kernels import forward_apply_kernel
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


class Statistics(NamedTuple):
    """The statistics of a conv's output that its kernel computes for the norm after it: per sample (InstanceNorm)
    or per channel over the batch (BatchNorm), with the norm's eps; running: (running_mean, running_var,
    num_batches_tracked, momentum) to update in place, as BatchNorm2d's training does, or None."""
    per_sample: bool
    eps: float
    running: tuple | None = None


class NormGradient(NamedTuple):
    """The sums (dz, dz * xhat per group and channel) of a norm's backward that the input-gradient conv computes of
    its output, the gradient of act(norm(x)) for the Prologue `norm`, reflection-padded by `pad`."""
    x: torch.Tensor
    norm: Prologue
    pad: int


def _precision(t):
    """fp32 operands multiply in full fp32 ('ieee'), as the reference's convolutions with TF32 off; the setting is
    ignored for 16-bit operands."""
    return "ieee" if t.dtype == torch.float32 else "tf32"


def _index(t):
    """The kernels' index dtype: int32 on a GPU, int64 in the interpreter (see conv_kernels)."""
    return tl.int32 if sized_for_gpu(t.device) else tl.int64


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


def _epilogue_args(epilogue, N, tiles, c_blocks, y):
    """Kernel arguments of a Statistics or NormGradient epilogue (dummies without): pointers, scalars and the norm
    input's strides; its flags; and the two [GROUPS, C_out] fp32 results it writes (GROUPS = N or 1), else None."""
    if epilogue is None:
        return ((y,) * 10, (1, 0.0, 0.0, 1, 1, 0), (0,) * 4,
                dict(STATS=False, UPDATE_RUNNING=False, NORM_GRAD=False, BLOCK_T=1), None)
    C, device = y.shape[1], y.device
    statistics = isinstance(epilogue, Statistics)
    groups, samples_per_group = (N, 1) if (epilogue if statistics else epilogue.norm).per_sample else (1, N)
    part_a = torch.empty((N, tiles, C), device=device, dtype=torch.float32)
    out_a = torch.empty((groups, C), device=device, dtype=torch.float32)
    out_b = torch.empty_like(out_a)
    buffers = (part_a, torch.empty_like(part_a), torch.empty((N, tiles), device=device, dtype=torch.float32),
               tickets(device, groups * c_blocks), out_a, out_b)
    flags = dict(STATS=statistics, UPDATE_RUNNING=statistics and epilogue.running is not None,
                 NORM_GRAD=not statistics, BLOCK_T=min(next_power_of_2(samples_per_group * tiles), 64))
    if statistics:
        running = epilogue.running
        pointers = (*buffers, *(running[:3] if running else (out_a,) * 3), out_a)
        scalars = (samples_per_group, epilogue.eps, running[3] if running else 0.0, 1, 1, 0)
        return pointers, scalars, (0,) * 4, flags, (out_a, out_b)
    x = epilogue.x
    scalars = (samples_per_group, 0.0, 0.0, x.shape[2], x.shape[3], epilogue.pad)
    return (*buffers, out_a, out_a, out_a, x), scalars, x.stride(), flags, (out_a, out_b)


def _conv(x, weight_view, out_channels, kernel, out_size, transposed, stride, padding, reflect, bias=None,
          prologue=None, epilogue=None, memory_format=None):
    """Launch conv_kernel; weight_view: (tensor, its strides as [C_out, C_in, KH, KW]). Returns y (in x's memory
    format unless given) and what the epilogue computes: a Statistics' (mean, rstd), a NormGradient's (sum_dz,
    sum_dzx), else None."""
    N, C_in, H, W = x.shape
    (KH, KW), (OH, OW) = kernel, out_size
    y = torch.empty((N, out_channels, OH, OW), device=x.device, dtype=x.dtype,
                    memory_format=memory_format or memory_format_of(x))
    classes = stride * stride if transposed else 1
    step = stride if transposed else 1
    TW, QW = cdiv(KW, step), cdiv(OW, step)
    rows, k_total = cdiv(OH, step) * QW, cdiv(KH, step) * TW * C_in
    cuda = sized_for_gpu(x.device)
    # In the interpreter every program runs in Python: large tiles keep the program count small.
    block_m = _block(rows, 128 if cuda else 1024)
    block_n, block_k = _block(out_channels, 128), _block(k_total, 64 if cuda else 256)
    tiles, c_blocks = cdiv(rows, block_m) * classes, cdiv(out_channels, block_n)
    pointers, scalars, norm_strides, epilogue_flags, results = _epilogue_args(epilogue, N, tiles, c_blocks, y)
    # the norm's arguments are the prologue's, or the NormGradient's norm (of the output)
    norm_grad = epilogue_flags["NORM_GRAD"]
    prologue_args, flags = _prologue_args(epilogue.norm if norm_grad else prologue, x)
    flags["PROLOGUE"] = prologue is not None
    weight, w_strides = weight_view
    conv_kernel[grid(tiles, c_blocks, N)](
        x, weight, x if bias is None else bias, y, *prologue_args[:4], *pointers,
        C_in, H, W, out_channels, OH, OW, KH, KW, stride, padding, TW, QW, rows, k_total, *prologue_args[4:],
        *scalars, *x.stride(), *w_strides, *y.stride(), *norm_strides,
        TRANSPOSED=transposed, REFLECT=reflect, HAS_BIAS=bias is not None, PRECISION=_precision(x), INDEX=_index(x),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=8 if block_m * block_n >= 128 * 128 else 4,
        **flags, **epilogue_flags)
    return y, results


def conv_forward(x, weight, bias, geometry, prologue=None, statistics=None):
    """The conv's output [N, C_out, OH, OW] (x's dtype and memory format) of x [N, C_in, H, W], normalized and
    activated on load with a prologue, and the output's (mean, rstd) as `statistics` ask, else None. The weight and
    bias may be of another float dtype than x (fp32 under autocast): they are cast on load."""
    KH, KW = weight.shape[2:]
    H, W = x.shape[2:]
    out_size = (geometry.output_size(H, KH), geometry.output_size(W, KW))
    s = weight.stride()
    if geometry.transposed:  # weight [C_in, C_out, KH, KW]
        view, out_channels = (weight, (s[1], s[0], s[2], s[3])), weight.shape[1]
    else:
        view, out_channels = (weight, s), weight.shape[0]
    return _conv(x, view, out_channels, (KH, KW), out_size, geometry.transposed, geometry.stride, geometry.padding,
                 geometry.reflect, bias, prologue, statistics)


def conv_input_grad(dy, weight, geometry, input_size, memory_format=None, x=None, prologue=None):
    """Gradient of conv_forward's output dy with respect to the conv's input activation, of spatial size input_size
    (H, W), in memory_format (default dy's); with a reflection pad, with respect to the padded activation
    (H + 2 pad, W + 2 pad). With the conv's prologue (and x, its pre-norm input) also the sums (sum_dz, sum_dzx)
    [GROUPS, C] of the norm's backward (see norm_act_backward's sums), else None."""
    s = weight.stride()
    KH, KW = weight.shape[2:]
    pad = geometry.padding if geometry.reflect else 0
    epilogue = None if prologue is None else NormGradient(x, prologue, pad)
    if geometry.transposed:  # a convolution of dy; weight [C_in, C_out] read as [out=C_in, in=C_out]
        return _conv(dy, (weight, s), weight.shape[0], (KH, KW), input_size, False, geometry.stride,
                     geometry.padding, False, epilogue=epilogue, memory_format=memory_format)
    size = tuple(n + 2 * pad for n in input_size)
    return _conv(dy, (weight, (s[1], s[0], s[2], s[3])), weight.shape[1], (KH, KW), size, True, geometry.stride,
                 geometry.padding - pad, False, epilogue=epilogue, memory_format=memory_format)


def conv_weight_grad(x, dy, weight, geometry, prologue=None):
    """Gradient of conv_forward's output dy with respect to the weight, in the weight's shape, strides (so autograd
    copies nothing into a channels-last weight's layout) and dtype; x is the conv's input as it was given (pre-norm
    with a prologue, which is recomputed)."""
    a, b = (x, dy) if geometry.transposed else (dy, x)
    N, C_a, GH, GW = a.shape
    C_b, H_b, W_b = b.shape[1:]
    KH, KW = weight.shape[2:]
    j_total, rows = KH * KW * C_b, GH * GW
    cuda = sized_for_gpu(x.device)
    block_a, block_j = _block(C_a, 64), _block(j_total, 64 if cuda else 256)
    block_r = 64 if cuda else 512
    base = cdiv(C_a, block_a) * cdiv(j_total, block_j) * N
    # split each sample's rows to fill the GPU; each split's partial sum is its own slice, added in order below
    splits = max(1, min(cdiv(target_programs(x.device), base), cdiv(rows, block_r)))
    chunk = cdiv(cdiv(rows, splits), block_r) * block_r
    splits = cdiv(rows, chunk)
    dweight = torch.empty_like(weight, dtype=torch.float32)  # [C_a, C_b, KH, KW], as either conv's weight
    wgrad_grid = grid(cdiv(C_a, block_a), cdiv(j_total, block_j), N * splits)
    # one partial sum is written straight into dweight; several go to a buffer, which the kernel sums into it
    sum_parts = N * splits > 1
    parts = (torch.empty((N * splits, C_a, C_b, KH, KW), device=x.device, dtype=torch.float32) if sum_parts
             else dweight[None])
    arrivals = tickets(x.device, wgrad_grid[0] * wgrad_grid[1]) if sum_parts else dweight
    prologue_args, flags = _prologue_args(prologue, x)
    normalized = flags.pop("PROLOGUE")  # the conv's input: a with a transposed conv, else b
    conv_wgrad_kernel[wgrad_grid](
        a, b, dweight, parts, arrivals, *prologue_args[:4], C_a, GH, GW, C_b, H_b, W_b, KW, geometry.stride,
        geometry.padding, j_total, chunk, splits, *prologue_args[4:], *a.stride(), *b.stride(), *dweight.stride(),
        *parts.stride(), REFLECT=geometry.reflect, PROLOGUE_A=normalized and geometry.transposed,
        PROLOGUE_B=normalized and not geometry.transposed, SUM_PARTS=sum_parts, PRECISION=_precision(x),
        INDEX=_index(x), BLOCK_A=block_a, BLOCK_J=block_j, BLOCK_R=block_r, num_warps=4, **flags)
    return dweight.to(weight.dtype)


def normalize(x, mean, rstd, weight, bias, negative_slope):
    """act((x - mean) * rstd * weight + bias) by the fused norm's apply kernel, from statistics [GROUPS, C] (GROUPS:
    N or 1)."""
    x = dense(x)
    N, C, H, W = x.shape
    groups, rows = mean.shape[0], N * H * W // mean.shape[0]
    y = torch.empty_like(x)
    block_hw, block_c, num_warps = tiling(x, rows, **NORM_TILE_BOUNDS)
    has_affine = weight is not None
    forward_apply_kernel[grid(cdiv(rows, block_hw), groups, cdiv(C, block_c))](
        x, y, y, y, y, mean, rstd, weight if has_affine else mean, bias if has_affine else mean, mean,
        C, H * W, rows, H, W, 0, 0, 0, 0, *flat_strides(x), *flat_strides(x), *flat_strides(x),
        0.0 if negative_slope is None else negative_slope, 0.0, HAS_AFFINE=has_affine,
        HAS_ACT=negative_slope is not None, HAS_DROPOUT=False, RESIDUAL=False, WRITE_Y=True, PAD=False,
        RELU_OUT=False, BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps)
    return y
