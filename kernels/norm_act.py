"""Fused InstanceNorm2d / BatchNorm2d + identity/ReLU/LeakyReLU (+ dropout), forward and backward.

Every conv of the pix2pix U-Net and the CycleGAN ResNet generator is followed by (norm, activation[, dropout]).
Eager PyTorch runs these as separate kernels, and InstanceNorm copies channels-last inputs to NCHW
(spec/performance.md b.1). Here one strided [H*W x C] tiling serves both layouts: in NCHW and in NHWC alike
``stride_h == W * stride_w``, so H and W flatten into one axis with stride ``stride_w`` and nothing is copied.

Forward: a partial-statistics kernel (shifted sums along a chunk of H*W, reduced once per chunk), a combine kernel
(statistics per group, running-stat update), an apply kernel (normalize, affine, activation, dropout).
Backward: a partial-sum kernel (sum dz and sum dz*xhat, dz being the gradient before the activation) and an
apply kernel for dx. Statistics and sums are fp32 whatever the input dtype.

Dropout draws Philox numbers with ``tl.rand`` keyed by a seed read from a device tensor, indexed by the logical
NCHW position, so the mask does not depend on the layout and backward recomputes it instead of storing it.
References read while writing this: Liger-Kernel group_norm, stable-fast's channels-last group_norm.
"""

import torch
import triton
import triton.language as tl
from torch import nn

from .launch import target_programs

ACTIVATIONS = ("identity", "relu", "leaky_relu")


@triton.jit
def _pre_activation(x, mean, rstd, weight, bias):
    """xhat = (x - mean) * rstd and z = xhat * weight + bias, all [BLOCK_HW, BLOCK_C] or broadcast [1, BLOCK_C]."""
    xhat = (x - mean) * rstd
    return xhat, xhat * weight + bias


@triton.jit
def _dropout_keep(seed_ptr, n, offs_hw, offs_c, C, HW, dropout_p):
    """Keep-mask of one tile, keyed by the logical NCHW index so NCHW and NHWC inputs draw the same mask."""
    seed = tl.load(seed_ptr)
    logical = n * C * HW + offs_c[None, :] * HW + offs_hw[:, None]
    return tl.rand(seed, logical) >= dropout_p


@triton.jit
def _channel_params(w_ptr, b_ptr, offs_c, c_mask, HAS_AFFINE: tl.constexpr):
    """Affine weight and bias of the tile's channels as [1, BLOCK_C] fp32 (1 and 0 without affine)."""
    if HAS_AFFINE:
        weight = tl.load(w_ptr + offs_c, mask=c_mask, other=1.0).to(tl.float32)
        bias = tl.load(b_ptr + offs_c, mask=c_mask, other=0.0).to(tl.float32)
    else:
        weight = tl.full(offs_c.shape, 1.0, tl.float32)
        bias = tl.zeros(offs_c.shape, tl.float32)
    return weight[None, :], bias[None, :]


@triton.jit
def _stats_partial_kernel(
    x_ptr,  # [N, C, HW] through strides, any float dtype
    part_mean_ptr,  # [N, SPLITS, C] fp32, out: mean of each chunk of HW
    part_m2_ptr,  # [N, SPLITS, C] fp32, out: sum of squared deviations of each chunk
    C, HW, CHUNK, SPLITS,
    stride_n, stride_c, stride_hw,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c, n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, HW)
    base = x_ptr + n.to(tl.int64) * stride_n + offs_c[None, :] * stride_c
    # statistics of x - pivot: exact for constant inputs, and no cancellation when |mean| >> std.
    # Sums stay elementwise in registers across the loop and are reduced across the tile once at the end,
    # instead of a cross-warp reduction (shared memory and barriers) in every iteration.
    pivot = tl.load(base + start * stride_hw, mask=c_mask[None, :], other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
    acc_sq = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
    for hw0 in range(start, end, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        mask = (offs_hw < end)[:, None] & c_mask[None, :]
        x = tl.load(base + offs_hw[:, None] * stride_hw, mask=mask, other=0.0).to(tl.float32)
        x = tl.where(mask, x - pivot, 0.0)
        acc += x
        acc_sq += x * x
    count = tl.zeros([BLOCK_C], tl.float32) + (end - start).to(tl.float32)
    total = tl.sum(acc, axis=0)
    mean = total / count
    m2 = tl.maximum(tl.sum(acc_sq, axis=0) - total * mean, 0.0)
    out = (n * SPLITS + split) * C + offs_c
    tl.store(part_mean_ptr + out, mean + tl.reshape(pivot, [BLOCK_C]), mask=c_mask)
    tl.store(part_m2_ptr + out, m2, mask=c_mask)


@triton.jit
def _stats_combine_kernel(
    part_mean_ptr,  # [GROUPS, ROWS, C] fp32: chunk means (ROWS = SPLITS for IN, N * SPLITS for BN)
    part_m2_ptr,  # [GROUPS, ROWS, C] fp32: chunk sums of squared deviations
    mean_ptr,  # [GROUPS, C] fp32, out
    rstd_ptr,  # [GROUPS, C] fp32, out
    running_mean_ptr,  # [C], updated in place when UPDATE_RUNNING
    running_var_ptr,  # [C], updated in place with the unbiased variance when UPDATE_RUNNING
    C, HW, CHUNK, SPLITS, ROWS,
    eps, momentum,
    UPDATE_RUNNING: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c, group = tl.program_id(0), tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    pivot = tl.load(part_mean_ptr + group * ROWS * C + offs_c, mask=c_mask, other=0.0)  # as in the partials
    count = tl.zeros([BLOCK_C], tl.float32)  # the same for every channel; a vector keeps loop types fixed
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for r0 in range(0, ROWS, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        r_mask = offs_r < ROWS
        row_count = tl.where(r_mask, tl.minimum(HW - (offs_r % SPLITS) * CHUNK, CHUNK), 0).to(tl.float32)
        mask = r_mask[:, None] & c_mask[None, :]
        idx = (group * ROWS + offs_r[:, None]) * C + offs_c[None, :]
        row_mean = tl.where(mask, tl.load(part_mean_ptr + idx, mask=mask, other=0.0) - pivot[None, :], 0.0)
        row_m2 = tl.load(part_m2_ptr + idx, mask=mask, other=0.0)
        block_count = tl.sum(row_count, axis=0)
        block_mean = tl.sum(row_count[:, None] * row_mean, axis=0) / block_count
        deviation = row_mean - block_mean[None, :]
        block_m2 = tl.sum(row_m2 + row_count[:, None] * deviation * deviation, axis=0)
        new_count = count + block_count
        delta = block_mean - mean
        mean += delta * (block_count / new_count)
        m2 += block_m2 + delta * delta * (count * block_count / new_count)
        count = new_count
    mean += pivot
    var = tl.maximum(m2 / count, 0.0)
    tl.store(mean_ptr + group * C + offs_c, mean, mask=c_mask)
    tl.store(rstd_ptr + group * C + offs_c, 1.0 / tl.sqrt(var + eps), mask=c_mask)
    if UPDATE_RUNNING:
        running_mean = tl.load(running_mean_ptr + offs_c, mask=c_mask).to(tl.float32)
        running_var = tl.load(running_var_ptr + offs_c, mask=c_mask).to(tl.float32)
        unbiased = tl.maximum(m2 / (count - 1.0), 0.0)
        tl.store(running_mean_ptr + offs_c, running_mean + momentum * (mean - running_mean), mask=c_mask)
        tl.store(running_var_ptr + offs_c, running_var + momentum * (unbiased - running_var), mask=c_mask)


@triton.jit
def _forward_apply_kernel(
    x_ptr,  # [N, C, HW] through strides
    y_ptr,  # [N, C, HW] through its own strides, dtype of x
    mean_ptr,  # [N, C] fp32 (stats_stride_n = C) or [C] (stats_stride_n = 0)
    rstd_ptr,  # same shape as mean
    w_ptr, b_ptr,  # [C] affine parameters, read only when HAS_AFFINE
    seed_ptr,  # [1] int64 Philox key, read only when HAS_DROPOUT
    C, HW,
    stride_xn, stride_xc, stride_xhw, stride_yn, stride_yc, stride_yhw, stats_stride_n,
    negative_slope, dropout_p,
    HAS_AFFINE: tl.constexpr, HAS_ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c, n, pid_hw = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_hw = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_mask = offs_c < C
    mask = (offs_hw < HW)[:, None] & c_mask[None, :]
    n64 = n.to(tl.int64)
    x = tl.load(x_ptr + n64 * stride_xn + offs_c[None, :] * stride_xc + offs_hw[:, None] * stride_xhw,
                mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + n * stats_stride_n + offs_c, mask=c_mask, other=0.0)[None, :]
    rstd = tl.load(rstd_ptr + n * stats_stride_n + offs_c, mask=c_mask, other=0.0)[None, :]
    weight, bias = _channel_params(w_ptr, b_ptr, offs_c, c_mask, HAS_AFFINE)
    _, y = _pre_activation(x, mean, rstd, weight, bias)
    if HAS_ACT:
        y = tl.where(y > 0, y, y * negative_slope)
    if HAS_DROPOUT:
        keep = _dropout_keep(seed_ptr, n, offs_hw, offs_c, C, HW, dropout_p)
        y = tl.where(keep, y / (1.0 - dropout_p), 0.0)
    tl.store(y_ptr + n64 * stride_yn + offs_c[None, :] * stride_yc + offs_hw[:, None] * stride_yhw,
             y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_pre_activation(
    x_ptr, dy_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, seed_ptr,
    n, offs_hw, offs_c, C, HW,
    stride_xn, stride_xc, stride_xhw, stride_dyn, stride_dyc, stride_dyhw, stats_stride_n,
    negative_slope, dropout_p,
    HAS_AFFINE: tl.constexpr, HAS_ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
):
    """Load one tile and return (xhat, dz, rstd, weight, mask): dz is dL/dz with z the affine output."""
    c_mask = offs_c < C
    mask = (offs_hw < HW)[:, None] & c_mask[None, :]
    n64 = n.to(tl.int64)
    x = tl.load(x_ptr + n64 * stride_xn + offs_c[None, :] * stride_xc + offs_hw[:, None] * stride_xhw,
                mask=mask, other=0.0).to(tl.float32)
    dz = tl.load(dy_ptr + n64 * stride_dyn + offs_c[None, :] * stride_dyc + offs_hw[:, None] * stride_dyhw,
                 mask=mask, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + n * stats_stride_n + offs_c, mask=c_mask, other=0.0)[None, :]
    rstd = tl.load(rstd_ptr + n * stats_stride_n + offs_c, mask=c_mask, other=0.0)[None, :]
    weight, bias = _channel_params(w_ptr, b_ptr, offs_c, c_mask, HAS_AFFINE)
    xhat, z = _pre_activation(x, mean, rstd, weight, bias)
    if HAS_DROPOUT:
        keep = _dropout_keep(seed_ptr, n, offs_hw, offs_c, C, HW, dropout_p)
        dz = tl.where(keep, dz / (1.0 - dropout_p), 0.0)
    if HAS_ACT:
        dz = tl.where(z > 0, dz, dz * negative_slope)
    return xhat, tl.where(mask, dz, 0.0), rstd, weight, mask


@triton.jit
def _backward_partial_kernel(
    x_ptr, dy_ptr,  # [N, C, HW] through their own strides
    mean_ptr, rstd_ptr,  # [N, C] or [C] fp32 (see stats_stride_n)
    w_ptr, b_ptr, seed_ptr,
    part_dz_ptr,  # [N, SPLITS, C] fp32, out: sum of dz over each chunk
    part_dzx_ptr,  # [N, SPLITS, C] fp32, out: sum of dz * xhat over each chunk
    C, HW, CHUNK, SPLITS,
    stride_xn, stride_xc, stride_xhw, stride_dyn, stride_dyc, stride_dyhw, stats_stride_n,
    negative_slope, dropout_p,
    HAS_AFFINE: tl.constexpr, HAS_ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c, n, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, HW)
    acc_dz = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)  # reduced across the tile once, after the loop
    acc_dzx = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
    for hw0 in range(start, end, BLOCK_HW):
        offs_hw = hw0 + tl.arange(0, BLOCK_HW)
        offs_hw = tl.where(offs_hw < end, offs_hw, HW)  # past the chunk reads as padding
        xhat, dz, _, _, _ = _grad_pre_activation(
            x_ptr, dy_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, seed_ptr, n, offs_hw, offs_c, C, HW,
            stride_xn, stride_xc, stride_xhw, stride_dyn, stride_dyc, stride_dyhw, stats_stride_n,
            negative_slope, dropout_p, HAS_AFFINE, HAS_ACT, HAS_DROPOUT)
        acc_dz += dz
        acc_dzx += dz * xhat
    sum_dz = tl.sum(acc_dz, axis=0)
    sum_dzx = tl.sum(acc_dzx, axis=0)
    out = (n * SPLITS + split) * C + offs_c
    tl.store(part_dz_ptr + out, sum_dz, mask=offs_c < C)
    tl.store(part_dzx_ptr + out, sum_dzx, mask=offs_c < C)


@triton.jit
def _backward_apply_kernel(
    x_ptr, dy_ptr,  # [N, C, HW] through their own strides
    dx_ptr,  # [N, C, HW] through the strides of x (same layout as x)
    mean_ptr, rstd_ptr,  # [N, C] or [C] fp32 (see stats_stride_n)
    w_ptr, b_ptr, seed_ptr,
    sum_dz_ptr, sum_dzx_ptr,  # [N, C] or [C] fp32 group sums, read only when BATCH_STATS
    C, HW,
    stride_xn, stride_xc, stride_xhw, stride_dyn, stride_dyc, stride_dyhw, stats_stride_n,
    negative_slope, dropout_p, inv_count,
    HAS_AFFINE: tl.constexpr, HAS_ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr, BATCH_STATS: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c, n, pid_hw = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_hw = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)
    xhat, dz, rstd, weight, mask = _grad_pre_activation(
        x_ptr, dy_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, seed_ptr, n, offs_hw, offs_c, C, HW,
        stride_xn, stride_xc, stride_xhw, stride_dyn, stride_dyc, stride_dyhw, stats_stride_n,
        negative_slope, dropout_p, HAS_AFFINE, HAS_ACT, HAS_DROPOUT)
    if BATCH_STATS:
        c_mask = offs_c < C
        mean_dz = tl.load(sum_dz_ptr + n * stats_stride_n + offs_c, mask=c_mask, other=0.0)[None, :] * inv_count
        mean_dzx = tl.load(sum_dzx_ptr + n * stats_stride_n + offs_c, mask=c_mask, other=0.0)[None, :] * inv_count
        dz = dz - mean_dz - xhat * mean_dzx
    dx = dz * weight * rstd
    tl.store(dx_ptr + n.to(tl.int64) * stride_xn + offs_c[None, :] * stride_xc + offs_hw[:, None] * stride_xhw,
             dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _hw_stride(t):
    """The single stride that walks the flattened H*W axis (exists for NCHW, NHWC and their size-1 cases)."""
    _, _, H, W = t.shape
    stride_h, stride_w = t.stride(2), t.stride(3)
    if W == 1:
        return stride_h
    if H == 1 or stride_h == W * stride_w:
        return stride_w
    raise ValueError(f"H and W of a tensor with strides {t.stride()} do not flatten into one axis; "
                     "pass an NCHW or channels-last tensor")


def _strides(t):
    return t.stride(0), t.stride(1), _hw_stride(t)


def _tiling(x):
    """BLOCK_C x BLOCK_HW tile and warps: channels inner when C is the unit-stride axis, H*W inner otherwise."""
    N, C, H, W = x.shape
    hw_pow2, c_pow2 = triton.next_power_of_2(H * W), triton.next_power_of_2(C)
    tile = 2048
    if x.stride(1) == 1 and C > 1:
        block_c = min(c_pow2, max(64, tile // hw_pow2))
        block_hw = min(hw_pow2, max(16, tile // block_c))
    else:
        block_hw = min(hw_pow2, tile)
        block_c = min(c_pow2, tile // block_hw)
    num_warps = 8 if block_c * block_hw >= 2048 else 4
    return block_c, block_hw, num_warps


def _split_plan(x, block_c, block_hw):
    """Split each H*W reduction into SPLITS chunks of CHUNK elements (a multiple of BLOCK_HW) to fill the GPU."""
    N, C, H, W = x.shape
    HW = H * W
    base_programs = triton.cdiv(C, block_c) * N
    splits = max(1, min(triton.cdiv(target_programs(x.device), base_programs), triton.cdiv(HW, block_hw)))
    chunk = triton.cdiv(triton.cdiv(HW, splits), block_hw) * block_hw
    return triton.cdiv(HW, chunk), chunk


def _check_batch_stats_size(x, per_sample):
    N, C, H, W = x.shape
    if per_sample and H * W <= 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.shape}")
    if not per_sample and N * H * W <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")


def norm_act_forward(x, weight, bias, running_mean, running_var, rng_state, *, per_sample, use_batch_stats,
                     momentum, eps, negative_slope, dropout_p):
    """Normalize x [N, C, H, W] (NCHW or channels-last), apply affine, LeakyReLU/ReLU and dropout.

    per_sample: statistics per (n, c) (InstanceNorm) instead of per c (BatchNorm).
    use_batch_stats: statistics of x; running_mean/running_var (if given) are then updated in place.
        Otherwise running_mean/running_var are used (BatchNorm eval).
    negative_slope: None for identity, 0.0 for ReLU, 0.2 for the reference's LeakyReLU.
    rng_state: int64 device tensor [1], the Philox key when dropout_p > 0; the caller advances it.
    Returns (y, mean, rstd) with y in x's layout and dtype, mean/rstd fp32 [N, C] or [C] for backward.
    """
    N, C, H, W = x.shape
    HW = H * W
    block_c, block_hw, num_warps = _tiling(x)
    stats_shape = (N, C) if per_sample else (C,)
    if use_batch_stats:
        _check_batch_stats_size(x, per_sample)
        splits, chunk = _split_plan(x, block_c, block_hw)
        part_mean = torch.empty((N, splits, C), device=x.device, dtype=torch.float32)
        part_m2 = torch.empty_like(part_mean)
        _stats_partial_kernel[(triton.cdiv(C, block_c), N, splits)](
            x, part_mean, part_m2, C, HW, chunk, splits, *_strides(x),
            BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps)
        mean = torch.empty(stats_shape, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        update_running = running_mean is not None
        groups, rows = (N, splits) if per_sample else (1, N * splits)
        combine_c = min(triton.next_power_of_2(C), 128)
        _stats_combine_kernel[(triton.cdiv(C, combine_c), groups)](
            part_mean, part_m2, mean, rstd,
            running_mean if update_running else mean, running_var if update_running else rstd,
            C, HW, chunk, splits, rows, eps, momentum,
            UPDATE_RUNNING=update_running, BLOCK_R=min(triton.next_power_of_2(rows), 16), BLOCK_C=combine_c)
    else:
        mean = running_mean.to(torch.float32, copy=True)
        rstd = torch.rsqrt(running_var.float() + eps)
    y = torch.empty_like(x)
    has_affine = weight is not None
    _forward_apply_kernel[(triton.cdiv(C, block_c), N, triton.cdiv(HW, block_hw))](
        x, y, mean, rstd, weight if has_affine else mean, bias if has_affine else mean,
        rng_state if dropout_p > 0 else mean,
        C, HW, *_strides(x), *_strides(y), C if per_sample else 0,
        0.0 if negative_slope is None else negative_slope, dropout_p,
        HAS_AFFINE=has_affine, HAS_ACT=negative_slope is not None, HAS_DROPOUT=dropout_p > 0,
        BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps)
    return y, mean, rstd


def norm_act_backward(dy, x, weight, bias, mean, rstd, rng_state, *, per_sample, use_batch_stats,
                      negative_slope, dropout_p, need_input_grad=True, need_affine_grad=True):
    """Gradients (dx, dweight, dbias) of norm_act_forward; rng_state must hold the key the forward used.

    dx is None unless need_input_grad; dweight/dbias are None without affine or need_affine_grad.
    """
    N, C, H, W = x.shape
    HW = H * W
    block_c, block_hw, num_warps = _tiling(x)
    has_affine = weight is not None
    dummy = mean
    common = dict(HAS_AFFINE=has_affine, HAS_ACT=negative_slope is not None, HAS_DROPOUT=dropout_p > 0,
                  BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps)
    pointers = (mean, rstd, weight if has_affine else dummy, bias if has_affine else dummy,
                rng_state if dropout_p > 0 else dummy)
    strides = (*_strides(x), *_strides(dy), C if per_sample else 0)
    scalars = (0.0 if negative_slope is None else negative_slope, dropout_p)
    need_sums = (need_input_grad and use_batch_stats) or (need_affine_grad and has_affine)
    sum_dz = sum_dzx = dweight = dbias = dx = None
    if need_sums:
        splits, chunk = _split_plan(x, block_c, block_hw)
        part_dz = torch.empty((N, splits, C), device=x.device, dtype=torch.float32)
        part_dzx = torch.empty_like(part_dz)
        _backward_partial_kernel[(triton.cdiv(C, block_c), N, splits)](
            x, dy, *pointers, part_dz, part_dzx, C, HW, chunk, splits, *strides, *scalars, **common)
        group_dims = 1 if per_sample else (0, 1)
        sum_dz, sum_dzx = part_dz.sum(group_dims), part_dzx.sum(group_dims)
        if has_affine and need_affine_grad:
            dweight = (sum_dzx.sum(0) if per_sample else sum_dzx).to(weight.dtype)
            dbias = (sum_dz.sum(0) if per_sample else sum_dz).to(bias.dtype)
    if need_input_grad:
        dx = torch.empty_like(x)
        batch_stats = use_batch_stats
        inv_count = 1.0 / (HW if per_sample else N * HW)
        _backward_apply_kernel[(triton.cdiv(C, block_c), N, triton.cdiv(HW, block_hw))](
            x, dy, dx, *pointers, sum_dz if batch_stats else dummy, sum_dzx if batch_stats else dummy,
            C, HW, *strides, *scalars, inv_count, BATCH_STATS=batch_stats, **common)
    return dx, dweight, dbias


class NormActFunction(torch.autograd.Function):
    """Autograd wrapper of norm_act_forward/norm_act_backward (x, weight, bias get gradients)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, rng_state, per_sample, use_batch_stats,
                momentum, eps, negative_slope, dropout_p):
        seed = None
        if dropout_p > 0:
            seed = rng_state.clone()  # the key this call uses, kept for backward
            rng_state.add_(1)  # advanced on device: no host sync, so it can run inside a CUDA graph
        y, mean, rstd = norm_act_forward(
            x, weight, bias, running_mean, running_var, seed, per_sample=per_sample,
            use_batch_stats=use_batch_stats, momentum=momentum, eps=eps, negative_slope=negative_slope,
            dropout_p=dropout_p)
        ctx.save_for_backward(x, weight, bias, mean, rstd, seed)
        ctx.options = dict(per_sample=per_sample, use_batch_stats=use_batch_stats, negative_slope=negative_slope,
                           dropout_p=dropout_p)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd, seed = ctx.saved_tensors
        dx, dweight, dbias = norm_act_backward(
            dy, x, weight, bias, mean, rstd, seed, need_input_grad=ctx.needs_input_grad[0],
            need_affine_grad=ctx.needs_input_grad[1] or ctx.needs_input_grad[2], **ctx.options)
        return dx, dweight, dbias, None, None, None, None, None, None, None, None, None


class FusedNormAct(nn.Module):
    """BatchNorm2d / InstanceNorm2d followed by identity, ReLU or LeakyReLU and optional dropout, fused.

    Parameters and buffers carry the names of the norm module it replaces, so state_dict keys (and
    checkpoints) are unchanged; the dropout key ``dropout_seed`` is a non-persistent buffer.
    """

    def __init__(self, num_features, norm="batch", activation="identity", negative_slope=0.2, dropout=0.0,
                 eps=1e-5, momentum=0.1, device=None, dtype=None):
        super().__init__()
        if norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if momentum is None:
            raise NotImplementedError("cumulative moving average (momentum=None) is not supported")
        self.num_features, self.norm, self.activation = num_features, norm, activation
        self.negative_slope, self.dropout, self.eps, self.momentum = negative_slope, dropout, eps, momentum
        self.affine = self.track_running_stats = norm == "batch"
        factory = dict(device=device, dtype=dtype)
        if self.affine:
            self.weight = nn.Parameter(torch.ones(num_features, **factory))
            self.bias = nn.Parameter(torch.zeros(num_features, **factory))
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)  # drawn from torch's seeded CPU generator
        self.register_buffer("dropout_seed", seed.to(device), persistent=False)

    @classmethod
    def from_norm(cls, norm_module, activation="identity", negative_slope=0.2, dropout=0.0):
        """A fused module sharing the parameters and buffers (the same tensors) of an existing norm module."""
        if isinstance(norm_module, nn.BatchNorm2d):
            if not (norm_module.affine and norm_module.track_running_stats):
                raise NotImplementedError("BatchNorm2d without affine or running stats is not supported")
            kind = "batch"
        elif isinstance(norm_module, nn.InstanceNorm2d):
            if norm_module.affine or norm_module.track_running_stats:
                raise NotImplementedError("InstanceNorm2d is supported with affine=False, track_running_stats=False")
            kind = "instance"
        else:
            raise TypeError(f"expected nn.BatchNorm2d or nn.InstanceNorm2d, got {type(norm_module).__name__}")
        some_tensor = next(norm_module.buffers(), torch.empty(0))
        fused = cls(norm_module.num_features, kind, activation, negative_slope, dropout, norm_module.eps,
                    norm_module.momentum, device=some_tensor.device)
        if kind == "batch":
            fused.weight, fused.bias = norm_module.weight, norm_module.bias
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(fused, name, getattr(norm_module, name))
        fused.train(norm_module.training)
        return fused

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"expected [N, {self.num_features}, H, W], got {tuple(x.shape)}")
        use_batch_stats = self.training or not self.track_running_stats
        update_running = self.training and self.track_running_stats
        if update_running:
            self.num_batches_tracked.add_(1)
        if self.dropout_seed.device != x.device:  # e.g. built from a buffer-less InstanceNorm2d on the CPU
            self.dropout_seed = self.dropout_seed.to(x.device)
        slope = {"identity": None, "relu": 0.0, "leaky_relu": self.negative_slope}[self.activation]
        return NormActFunction.apply(
            x, self.weight, self.bias, self.running_mean if not use_batch_stats or update_running else None,
            self.running_var if not use_batch_stats or update_running else None, self.dropout_seed,
            self.norm == "instance", use_batch_stats, self.momentum, self.eps, slope,
            self.dropout if self.training else 0.0)

    def extra_repr(self):
        return (f"{self.num_features}, norm={self.norm}, activation={self.activation}, "
                f"negative_slope={self.negative_slope}, dropout={self.dropout}, eps={self.eps}, "
                f"momentum={self.momentum}")
