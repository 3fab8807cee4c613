"""Fused InstanceNorm2d / BatchNorm2d + identity/ReLU/LeakyReLU (+ dropout) (+ reflection pad), forward and
backward.

Every conv of the pix2pix U-Net and the CycleGAN ResNet generator is followed by (norm, activation[, dropout]).
Eager PyTorch runs these as separate kernels, and InstanceNorm copies channels-last inputs to NCHW
(spec/performance.md b.1). Here one strided [rows x C] tiling serves both layouts: in NCHW and in NHWC alike
``stride_h == W * stride_w``, so H and W flatten into one axis with stride ``stride_w`` and nothing is copied.
A statistics group is one sample's H*W rows (InstanceNorm) or all N*H*W rows of the batch (BatchNorm).

Where one program per channel block can reduce a whole group without starving the GPU (a group that fits one
tile, as in the U-Net's inner levels at batch 1, or enough channel blocks and groups to fill the SMs), forward
and backward are one launch each: the program reduces its group, then applies. Inside a CUDA graph a small
layer costs about one launch latency per kernel, so the launch count matters more than bandwidth there.
Otherwise each group's rows are split into chunks, and each pass is two launches: forward a partial-statistics
kernel (shifted sums per chunk, which the last chunk program of each group and channel block to finish combines
into the group's statistics and the running-stat update) and an apply kernel (normalize, affine, activation,
dropout); backward a partial-sum kernel (sum dz and sum dz*xhat, dz being the gradient before the activation,
combined the same way) and an apply kernel for dx. The last program is found with an atomic ticket counter,
so the combine order, and the result, are deterministic. Statistics and sums are fp32 whatever the input dtype.
When a reflection pad follows the layer, the apply kernel writes the padded output and the backward gathers the
padded gradient, so the pad makes no pass of its own. The apply kernel can also add a residual (a ResnetBlock's
skip) and write relu(output) into a channel slice of a U-Net skip concatenation; backward then sums the
gradients of every output it wrote.

Dropout draws Philox numbers with ``tl.rand`` keyed by a seed read from a device tensor, indexed by the logical
NCHW position, so the mask does not depend on the layout and backward recomputes it instead of storing it.
References read while writing this: Liger-Kernel group_norm, stable-fast's channels-last group_norm.
"""

import torch
import triton
import triton.language as tl
from torch import nn

from .launch import cdiv, next_power_of_2, target_programs
from .pad import _reflect, _reflected_grad, check_padding, memory_format_of, with_padded_twin

ACTIVATIONS = ("identity", "relu", "leaky_relu")


@triton.jit
def _row_offsets(g, rows, HW, stride_n, stride_hw):
    """Memory offsets of `rows` of group g: row r is position r % HW of sample g + r // HW.

    An InstanceNorm group is one sample (g = n and r < HW); a BatchNorm group is the whole batch (g = 0).
    """
    return (g + rows // HW).to(tl.int64) * stride_n + (rows % HW) * stride_hw


@triton.jit
def _padded_source_rows(rows, HW, H, W, pad_t, pad_b, pad_l, pad_r):
    """The row of x that each row of the reflection-padded output copies (both flattened per sample the same way),
    and whether that row is outside the border (where the unpadded output has it too)."""
    W_out = W + pad_l + pad_r
    HW_out = (H + pad_t + pad_b) * W_out
    pos = rows % HW_out
    h, w = pos // W_out - pad_t, pos % W_out - pad_l
    inner = (h >= 0) & (h < H) & (w >= 0) & (w < W)
    return (rows // HW_out) * HW + _reflect(h, H) * W + _reflect(w, W), inner


@triton.jit
def _pre_activation(x, mean, rstd, weight, bias):
    """xhat = (x - mean) * rstd and z = xhat * weight + bias, all [BLOCK_HW, BLOCK_C] or broadcast [1, BLOCK_C]."""
    xhat = (x - mean) * rstd
    return xhat, xhat * weight + bias


@triton.jit
def _dropout_keep(seed_ptr, g, rows, offs_c, C, HW, dropout_p):
    """Keep-mask of one tile, keyed by the logical NCHW index so NCHW and NHWC inputs draw the same mask."""
    seed = tl.load(seed_ptr)
    logical = (g + rows // HW)[:, None] * C * HW + offs_c[None, :] * HW + (rows % HW)[:, None]
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
def _group_values(ptr, g, offs_c, c_mask, C):
    """A [GROUPS, C] fp32 statistic of group g as [1, BLOCK_C]."""
    return tl.load(ptr + g * C + offs_c, mask=c_mask, other=0.0)[None, :]


@triton.jit
def _group_params(mean_ptr, rstd_ptr, w_ptr, b_ptr, g, offs_c, c_mask, C, HAS_AFFINE: tl.constexpr):
    """Group g's mean and rstd and the affine weight and bias of the tile's channels, each [1, BLOCK_C] fp32."""
    weight, bias = _channel_params(w_ptr, b_ptr, offs_c, c_mask, HAS_AFFINE)
    return (_group_values(mean_ptr, g, offs_c, c_mask, C), _group_values(rstd_ptr, g, offs_c, c_mask, C),
            weight, bias)


@triton.jit
def _moments(x_ptr, g, start, end, HW, offs_c, c_mask, stride_n, stride_c, stride_hw,
             BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Mean and sum of squared deviations per channel of rows [start, end) of group g, and the row count.

    The sums are of x - pivot (the first row): exact for constant inputs, and no cancellation when |mean| >> std.
    They stay elementwise in registers across the loop and are reduced across the tile once at the end,
    instead of a cross-warp reduction (shared memory and barriers) in every iteration.
    """
    cols = x_ptr + offs_c[None, :] * stride_c
    first = start + tl.arange(0, 1)
    pivot = tl.load(cols + _row_offsets(g, first, HW, stride_n, stride_hw)[:, None], mask=c_mask[None, :],
                    other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
    acc_sq = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
    for r0 in range(start, end, BLOCK_HW):
        rows = r0 + tl.arange(0, BLOCK_HW)
        mask = (rows < end)[:, None] & c_mask[None, :]
        x = tl.load(cols + _row_offsets(g, rows, HW, stride_n, stride_hw)[:, None], mask=mask, other=0.0)
        x = tl.where(mask, x.to(tl.float32) - pivot, 0.0)
        acc += x
        acc_sq += x * x
    count = tl.zeros([BLOCK_C], tl.float32) + (end - start).to(tl.float32)
    total = tl.sum(acc, axis=0)
    mean = total / count
    m2 = tl.maximum(tl.sum(acc_sq, axis=0) - total * mean, 0.0)
    return mean + tl.reshape(pivot, [BLOCK_C]), m2, count


@triton.jit
def _finish_stats(mean, m2, count, mean_ptr, rstd_ptr, running_mean_ptr, running_var_ptr, batches_ptr, g, pid_c,
                  offs_c, c_mask, C, eps, momentum, UPDATE_RUNNING: tl.constexpr):
    """Store a group's mean and 1/std (biased variance), update the running statistics (and, from channel block 0,
    the batch count: BatchNorm's num_batches_tracked, without a kernel of its own); returns rstd."""
    var = tl.maximum(m2 / count, 0.0)
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + g * C + offs_c, mean, mask=c_mask)
    tl.store(rstd_ptr + g * C + offs_c, rstd, mask=c_mask)
    if UPDATE_RUNNING:
        running_mean = tl.load(running_mean_ptr + offs_c, mask=c_mask).to(tl.float32)
        running_var = tl.load(running_var_ptr + offs_c, mask=c_mask).to(tl.float32)
        unbiased = tl.maximum(m2 / (count - 1.0), 0.0)
        tl.store(running_mean_ptr + offs_c, running_mean + momentum * (mean - running_mean), mask=c_mask)
        tl.store(running_var_ptr + offs_c, running_var + momentum * (unbiased - running_var), mask=c_mask)
        if pid_c == 0:
            tl.store(batches_ptr, tl.load(batches_ptr) + 1)
    return rstd


@triton.jit
def _apply_tile(x_ptr, y_ptr, yp_ptr, r_ptr, yr_ptr, mean, rstd, weight, bias, seed_ptr, g, rows, offs_c, c_mask, C,
                HW, OUT_ROWS, H, W, pad_t, pad_b, pad_l, pad_r, stride_n, stride_c, stride_hw, stride_pn, stride_pc,
                stride_phw, stride_rn, stride_rc, stride_rhw, negative_slope, dropout_p, HAS_ACT: tl.constexpr,
                HAS_DROPOUT: tl.constexpr, RESIDUAL: tl.constexpr, WRITE_Y: tl.constexpr, PAD: tl.constexpr,
                RELU_OUT: tl.constexpr):
    """out = dropout(act(xhat * weight + bias)) (+ residual) for one [BLOCK_HW, BLOCK_C] tile of group g, stored
    to y (WRITE_Y; x's strides, as the residual's), reflection-padded to yp (PAD; strides stride_p*) and/or as
    relu(out) to yr (RELU_OUT; strides stride_r*: a channel slice of a U-Net skip concatenation).

    With PAD the rows are yp's: each reads the row of x it mirrors (the same dropout draw and residual), and
    stores to y too where it is not in the border.
    """
    mask = (rows < OUT_ROWS)[:, None] & c_mask[None, :]
    src = rows
    if PAD:
        src, inner = _padded_source_rows(rows, HW, H, W, pad_t, pad_b, pad_l, pad_r)
    offsets = _row_offsets(g, src, HW, stride_n, stride_hw)[:, None] + offs_c[None, :] * stride_c
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    _, out = _pre_activation(x, mean, rstd, weight, bias)
    if HAS_ACT:
        out = tl.where(out > 0, out, out * negative_slope)
    if HAS_DROPOUT:
        keep = _dropout_keep(seed_ptr, g, src, offs_c, C, HW, dropout_p)
        out = tl.where(keep, out / (1.0 - dropout_p), 0.0)
    if RESIDUAL:
        out += tl.load(r_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if RELU_OUT:
        tl.store(yr_ptr + _row_offsets(g, src, HW, stride_rn, stride_rhw)[:, None] + offs_c[None, :] * stride_rc,
                 tl.maximum(out, 0.0).to(yr_ptr.dtype.element_ty), mask=mask)
    if PAD:
        HW_out = (H + pad_t + pad_b) * (W + pad_l + pad_r)
        tl.store(yp_ptr + _row_offsets(g, rows, HW_out, stride_pn, stride_phw)[:, None] + offs_c[None, :] * stride_pc,
                 out.to(yp_ptr.dtype.element_ty), mask=mask)
        if WRITE_Y:
            tl.store(y_ptr + offsets, out.to(y_ptr.dtype.element_ty), mask=mask & inner[:, None])
    elif WRITE_Y:
        tl.store(y_ptr + offsets, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _last_to_finish(tickets_ptr, g, pid_c, SPLITS):
    """Whether this program is the last of the SPLITS chunk programs of (group g, channel block pid_c) to finish.

    Each takes a ticket after storing its partial results; the barrier orders the whole program's stores before
    the atomic, whose acquire-release semantics publish them to the program that draws the last ticket. That one
    resets the counter for the next launch, so the tickets are zero between launches without a memset.
    """
    tl.debug_barrier()
    ticket = tl.atomic_add(tickets_ptr + g * tl.num_programs(0) + pid_c, 1)
    last = ticket == SPLITS - 1
    if last:
        tl.store(tickets_ptr + g * tl.num_programs(0) + pid_c, 0)
    return last


@triton.jit
def _stats_partial_kernel(
    x_ptr,  # [N, C, HW] through strides, any float dtype
    part_mean_ptr,  # [GROUPS, SPLITS, C] fp32, out: mean of each chunk of a group's rows
    part_m2_ptr,  # [GROUPS, SPLITS, C] fp32, out: sum of squared deviations of each chunk
    tickets_ptr,  # [GROUPS, C_BLOCKS] int32, zero: see _last_to_finish
    mean_ptr, rstd_ptr,  # [GROUPS, C] fp32, out: the group's statistics, from the chunks
    running_mean_ptr,  # [C], updated in place when UPDATE_RUNNING
    running_var_ptr,  # [C], updated in place with the unbiased variance when UPDATE_RUNNING
    batches_ptr,  # [] int64, incremented when UPDATE_RUNNING
    C, HW, ROWS, CHUNK, SPLITS,
    stride_n, stride_c, stride_hw,
    eps, momentum,
    UPDATE_RUNNING: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Moments of one chunk of a group's rows; the last chunk of a (group, channel block) to finish combines them."""
    pid_c, g, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    start = split * CHUNK
    mean, m2, _ = _moments(x_ptr, g, start, tl.minimum(start + CHUNK, ROWS), HW, offs_c, c_mask,
                           stride_n, stride_c, stride_hw, BLOCK_HW, BLOCK_C)
    out = (g * SPLITS + split) * C + offs_c
    tl.store(part_mean_ptr + out, mean, mask=c_mask)
    tl.store(part_m2_ptr + out, m2, mask=c_mask)
    if _last_to_finish(tickets_ptr, g, pid_c, SPLITS):
        pivot = tl.load(part_mean_ptr + g * SPLITS * C + offs_c, mask=c_mask, other=0.0)  # as in the chunks
        count = tl.zeros([BLOCK_C], tl.float32)  # the same for every channel; a vector keeps loop types fixed
        mean = tl.zeros([BLOCK_C], tl.float32)
        m2 = tl.zeros([BLOCK_C], tl.float32)
        for r0 in range(0, SPLITS, BLOCK_R):  # one iteration when BLOCK_R covers all chunks: no serial chain
            offs_r = r0 + tl.arange(0, BLOCK_R)
            r_mask = offs_r < SPLITS
            row_count = tl.where(r_mask, tl.minimum(ROWS - offs_r * CHUNK, CHUNK), 0).to(tl.float32)
            mask = r_mask[:, None] & c_mask[None, :]
            idx = (g * SPLITS + offs_r[:, None]) * C + offs_c[None, :]
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
        _finish_stats(mean + pivot, m2, count, mean_ptr, rstd_ptr, running_mean_ptr, running_var_ptr, batches_ptr,
                      g, pid_c, offs_c, c_mask, C, eps, momentum, UPDATE_RUNNING)


@triton.jit
def _forward_apply_kernel(
    x_ptr,  # [N, C, HW] through strides stride_n, stride_c, stride_hw, any float dtype
    y_ptr,  # [N, C, HW] with x's strides and dtype, out when WRITE_Y
    yp_ptr,  # [N, C, HW_out] through strides stride_p*, dtype of x: the padded output, out when PAD
    r_ptr,  # [N, C, HW] with x's strides: the residual added to the output, read when RESIDUAL
    yr_ptr,  # [N, C, HW] through strides stride_r*: relu(output), out when RELU_OUT
    mean_ptr, rstd_ptr,  # [GROUPS, C] fp32
    w_ptr, b_ptr,  # [C] affine parameters, read only when HAS_AFFINE
    seed_ptr,  # [1] int64 Philox key, read only when HAS_DROPOUT
    C, HW, OUT_ROWS,  # OUT_ROWS: rows per group of the output the tiles walk (yp's with PAD)
    H, W, pad_t, pad_b, pad_l, pad_r,  # x's plane and yp's reflection padding, read only when PAD
    stride_n, stride_c, stride_hw, stride_pn, stride_pc, stride_phw, stride_rn, stride_rc, stride_rhw,
    negative_slope, dropout_p,
    HAS_AFFINE: tl.constexpr, HAS_ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr, RESIDUAL: tl.constexpr,
    WRITE_Y: tl.constexpr, PAD: tl.constexpr, RELU_OUT: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c, g, pid_r = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    mean, rstd, weight, bias = _group_params(mean_ptr, rstd_ptr, w_ptr, b_ptr, g, offs_c, c_mask, C, HAS_AFFINE)
    _apply_tile(x_ptr, y_ptr, yp_ptr, r_ptr, yr_ptr, mean, rstd, weight, bias, seed_ptr, g,
                pid_r * BLOCK_HW + tl.arange(0, BLOCK_HW), offs_c, c_mask, C, HW, OUT_ROWS,
                H, W, pad_t, pad_b, pad_l, pad_r, stride_n, stride_c, stride_hw, stride_pn, stride_pc, stride_phw,
                stride_rn, stride_rc, stride_rhw, negative_slope, dropout_p, HAS_ACT, HAS_DROPOUT, RESIDUAL, WRITE_Y,
                PAD, RELU_OUT)


@triton.jit
def _forward_group_kernel(
    x_ptr, y_ptr, yp_ptr, r_ptr, yr_ptr,  # as in _forward_apply_kernel
    mean_ptr, rstd_ptr,  # [GROUPS, C] fp32, out
    running_mean_ptr, running_var_ptr, batches_ptr,  # [C], [C], [] int64, updated in place when UPDATE_RUNNING
    w_ptr, b_ptr, seed_ptr,
    C, HW, ROWS, OUT_ROWS,
    H, W, pad_t, pad_b, pad_l, pad_r,
    stride_n, stride_c, stride_hw, stride_pn, stride_pc, stride_phw, stride_rn, stride_rc, stride_rhw,
    eps, momentum, negative_slope, dropout_p,
    UPDATE_RUNNING: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    RESIDUAL: tl.constexpr, WRITE_Y: tl.constexpr, PAD: tl.constexpr, RELU_OUT: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The whole forward in one launch, for groups one program per channel block covers: statistics, then apply
    (the second read of the group is mostly served from cache)."""
    pid_c, g = tl.program_id(0), tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    mean, m2, count = _moments(x_ptr, g, 0, ROWS, HW, offs_c, c_mask, stride_n, stride_c, stride_hw,
                               BLOCK_HW, BLOCK_C)
    rstd = _finish_stats(mean, m2, count, mean_ptr, rstd_ptr, running_mean_ptr, running_var_ptr, batches_ptr, g,
                         pid_c, offs_c, c_mask, C, eps, momentum, UPDATE_RUNNING)
    weight, bias = _channel_params(w_ptr, b_ptr, offs_c, c_mask, HAS_AFFINE)
    for r0 in range(0, OUT_ROWS, BLOCK_HW):
        _apply_tile(x_ptr, y_ptr, yp_ptr, r_ptr, yr_ptr, mean[None, :], rstd[None, :], weight, bias, seed_ptr, g,
                    r0 + tl.arange(0, BLOCK_HW), offs_c, c_mask, C, HW, OUT_ROWS, H, W, pad_t, pad_b, pad_l, pad_r,
                    stride_n, stride_c, stride_hw, stride_pn, stride_pc, stride_phw, stride_rn, stride_rc, stride_rhw,
                    negative_slope, dropout_p, HAS_ACT, HAS_DROPOUT, RESIDUAL, WRITE_Y, PAD, RELU_OUT)


@triton.jit
def _grad_tile(
    x_ptr, dy_ptr, dyp_ptr, dyr_ptr, mean, rstd, weight, bias, seed_ptr, g, rows, offs_c, c_mask, C, HW, ROWS,
    H, W, pad_t, pad_b, pad_l, pad_r, stride_n, stride_c, stride_hw, stride_dn, stride_dc, stride_dhw,
    stride_pn, stride_pc, stride_phw,
    stride_rn, stride_rc, stride_rhw, negative_slope, dropout_p, HAS_ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    HAS_DY: tl.constexpr, PAD: tl.constexpr, RELU_OUT: tl.constexpr,
):
    """Load one tile; return (xhat, dz, dout, mask, offsets), 0 outside the tile: dout is the gradient of the
    layer's output (dy's, if HAS_DY, plus, if PAD, the padded output's dyp gathered from every padded position
    each row fills, plus, if RELU_OUT, relu(output)'s dyr where the output is positive), dz the gradient of z,
    the affine output; offsets locate the tile in x's strides."""
    mask = (rows < ROWS)[:, None] & c_mask[None, :]
    offsets = _row_offsets(g, rows, HW, stride_n, stride_hw)[:, None] + offs_c[None, :] * stride_c
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    xhat, z = _pre_activation(x, mean, rstd, weight, bias)
    if HAS_DROPOUT:
        keep = _dropout_keep(seed_ptr, g, rows, offs_c, C, HW, dropout_p)
    dout = tl.zeros_like(x)
    if HAS_DY:
        dy_offsets = _row_offsets(g, rows, HW, stride_dn, stride_dhw)[:, None] + offs_c[None, :] * stride_dc
        dout += tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(tl.float32)
    if PAD:
        pos = rows % HW
        sample_ptr = dyp_ptr + (g + rows // HW).to(tl.int64) * stride_pn
        dout += _reflected_grad(sample_ptr, pos // W, pos % W, H, W, pad_t, pad_b, pad_l, pad_r, offs_c,
                                (W + pad_l + pad_r) * stride_phw, stride_phw, stride_pc, mask)
    if RELU_OUT:
        # where the output is positive: z > 0, whatever the activation (dropped elements get no gradient anyway)
        dyr = tl.load(dyr_ptr + _row_offsets(g, rows, HW, stride_rn, stride_rhw)[:, None] + offs_c[None, :] * stride_rc,
                      mask=mask, other=0.0).to(tl.float32)
        dout += tl.where(z > 0, dyr, 0.0)
    dz = dout
    if HAS_DROPOUT:
        dz = tl.where(keep, dz / (1.0 - dropout_p), 0.0)
    if HAS_ACT:
        dz = tl.where(z > 0, dz, dz * negative_slope)
    return xhat, tl.where(mask, dz, 0.0), dout, mask, offsets


@triton.jit
def _store_dx(dx_ptr, dr_ptr, xhat, dz, dout, mask, offsets, rstd, weight, mean_dz, mean_dzx,
              BATCH_STATS: tl.constexpr, RESIDUAL: tl.constexpr):
    """dx = (dz - mean(dz) - xhat mean(dz xhat)) weight rstd with batch statistics, dz weight rstd without; the
    residual's gradient is the output's, dout."""
    if BATCH_STATS:
        dz = dz - mean_dz - xhat * mean_dzx
    tl.store(dx_ptr + offsets, (dz * weight * rstd).to(dx_ptr.dtype.element_ty), mask=mask)
    if RESIDUAL:
        tl.store(dr_ptr + offsets, dout.to(dr_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_partial_kernel(
    x_ptr,  # [N, C, HW] through strides stride_n, stride_c, stride_hw
    dy_ptr,  # [N, C, HW] through strides stride_d*: the output's gradient, read when HAS_DY
    dyp_ptr,  # [N, C, HW_out] through strides stride_p*: the padded output's gradient, read when PAD
    dyr_ptr,  # [N, C, HW] through strides stride_r*: relu(output)'s gradient, read when RELU_OUT
    mean_ptr, rstd_ptr,  # [GROUPS, C] fp32
    w_ptr, b_ptr, seed_ptr,
    part_dz_ptr,  # [GROUPS, SPLITS, C] fp32, out: sum of dz over each chunk
    part_dzx_ptr,  # [GROUPS, SPLITS, C] fp32, out: sum of dz * xhat over each chunk
    tickets_ptr,  # [GROUPS, C_BLOCKS] int32, zero: see _last_to_finish
    sum_dz_ptr, sum_dzx_ptr,  # [GROUPS, C] fp32, out: the group's sums, from the chunks
    C, HW, ROWS, CHUNK, SPLITS,
    H, W, pad_t, pad_b, pad_l, pad_r,  # x's plane and the padding of the output dyp belongs to, read when PAD
    stride_n, stride_c, stride_hw, stride_dn, stride_dc, stride_dhw,
    stride_pn, stride_pc, stride_phw, stride_rn, stride_rc, stride_rhw,
    negative_slope, dropout_p,
    HAS_AFFINE: tl.constexpr, HAS_ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_DY: tl.constexpr,
    PAD: tl.constexpr, RELU_OUT: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Sums of dz and dz * xhat over one chunk of a group's rows; the last chunk of a (group, channel block) to
    finish adds them up."""
    pid_c, g, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    mean, rstd, weight, bias = _group_params(mean_ptr, rstd_ptr, w_ptr, b_ptr, g, offs_c, c_mask, C, HAS_AFFINE)
    start = split * CHUNK
    end = tl.minimum(start + CHUNK, ROWS)
    acc_dz = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)  # reduced across the tile once, after the loop
    acc_dzx = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
    for r0 in range(start, end, BLOCK_HW):
        rows = r0 + tl.arange(0, BLOCK_HW)
        rows = tl.where(rows < end, rows, ROWS)  # past the chunk reads as padding
        xhat, dz, _, _, _ = _grad_tile(x_ptr, dy_ptr, dyp_ptr, dyr_ptr, mean, rstd, weight, bias, seed_ptr, g, rows,
                                       offs_c, c_mask, C, HW, ROWS, H, W, pad_t, pad_b, pad_l, pad_r,
                                       stride_n, stride_c, stride_hw, stride_dn, stride_dc, stride_dhw,
                                       stride_pn, stride_pc, stride_phw,
                                       stride_rn, stride_rc, stride_rhw, negative_slope, dropout_p, HAS_ACT,
                                       HAS_DROPOUT, HAS_DY, PAD, RELU_OUT)
        acc_dz += dz
        acc_dzx += dz * xhat
    out = (g * SPLITS + split) * C + offs_c
    tl.store(part_dz_ptr + out, tl.sum(acc_dz, axis=0), mask=c_mask)
    tl.store(part_dzx_ptr + out, tl.sum(acc_dzx, axis=0), mask=c_mask)
    if _last_to_finish(tickets_ptr, g, pid_c, SPLITS):
        total_dz = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
        total_dzx = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
        for r0 in range(0, SPLITS, BLOCK_R):
            offs_r = r0 + tl.arange(0, BLOCK_R)
            mask = (offs_r < SPLITS)[:, None] & c_mask[None, :]
            idx = (g * SPLITS + offs_r[:, None]) * C + offs_c[None, :]
            total_dz += tl.load(part_dz_ptr + idx, mask=mask, other=0.0)
            total_dzx += tl.load(part_dzx_ptr + idx, mask=mask, other=0.0)
        tl.store(sum_dz_ptr + g * C + offs_c, tl.sum(total_dz, axis=0), mask=c_mask)
        tl.store(sum_dzx_ptr + g * C + offs_c, tl.sum(total_dzx, axis=0), mask=c_mask)


@triton.jit
def _backward_apply_kernel(
    x_ptr, dy_ptr, dyp_ptr, dyr_ptr,  # as in _backward_partial_kernel
    dx_ptr, dr_ptr,  # [N, C, HW] with x's strides, out: the input's gradient, and the residual's when RESIDUAL
    mean_ptr, rstd_ptr,  # [GROUPS, C] fp32
    w_ptr, b_ptr, seed_ptr,
    sum_dz_ptr, sum_dzx_ptr,  # [GROUPS, C] fp32 group sums, read only when BATCH_STATS
    C, HW, ROWS,
    H, W, pad_t, pad_b, pad_l, pad_r,
    stride_n, stride_c, stride_hw, stride_dn, stride_dc, stride_dhw,
    stride_pn, stride_pc, stride_phw, stride_rn, stride_rc, stride_rhw,
    negative_slope, dropout_p,
    HAS_AFFINE: tl.constexpr, HAS_ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr, BATCH_STATS: tl.constexpr,
    HAS_DY: tl.constexpr, PAD: tl.constexpr, RESIDUAL: tl.constexpr, RELU_OUT: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c, g, pid_r = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    rows = pid_r * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mean, rstd, weight, bias = _group_params(mean_ptr, rstd_ptr, w_ptr, b_ptr, g, offs_c, c_mask, C, HAS_AFFINE)
    xhat, dz, dout, mask, offsets = _grad_tile(
        x_ptr, dy_ptr, dyp_ptr, dyr_ptr, mean, rstd, weight, bias, seed_ptr, g, rows, offs_c, c_mask, C, HW, ROWS,
        H, W, pad_t, pad_b, pad_l, pad_r, stride_n, stride_c, stride_hw, stride_dn, stride_dc, stride_dhw,
        stride_pn, stride_pc, stride_phw,
        stride_rn, stride_rc, stride_rhw, negative_slope, dropout_p, HAS_ACT, HAS_DROPOUT, HAS_DY, PAD, RELU_OUT)
    mean_dz = mean  # placeholders, unused without batch statistics
    mean_dzx = mean
    if BATCH_STATS:
        mean_dz = _group_values(sum_dz_ptr, g, offs_c, c_mask, C) / ROWS
        mean_dzx = _group_values(sum_dzx_ptr, g, offs_c, c_mask, C) / ROWS
    _store_dx(dx_ptr, dr_ptr, xhat, dz, dout, mask, offsets, rstd, weight, mean_dz, mean_dzx, BATCH_STATS, RESIDUAL)


@triton.jit
def _backward_group_kernel(
    x_ptr, dy_ptr, dyp_ptr, dyr_ptr, dx_ptr, dr_ptr,  # as in _backward_apply_kernel; dx, dr only when INPUT_GRAD
    mean_ptr, rstd_ptr,  # [GROUPS, C] fp32
    w_ptr, b_ptr, seed_ptr,
    sum_dz_ptr, sum_dzx_ptr,  # [GROUPS, C] fp32, out: group sums (for the affine gradients)
    C, HW, ROWS,
    H, W, pad_t, pad_b, pad_l, pad_r,
    stride_n, stride_c, stride_hw, stride_dn, stride_dc, stride_dhw,
    stride_pn, stride_pc, stride_phw, stride_rn, stride_rc, stride_rhw,
    negative_slope, dropout_p,
    HAS_AFFINE: tl.constexpr, HAS_ACT: tl.constexpr, HAS_DROPOUT: tl.constexpr, BATCH_STATS: tl.constexpr,
    HAS_DY: tl.constexpr, PAD: tl.constexpr, RESIDUAL: tl.constexpr, RELU_OUT: tl.constexpr, INPUT_GRAD: tl.constexpr,
    BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The whole backward in one launch, for groups one program per channel block covers: sums, then dx."""
    pid_c, g = tl.program_id(0), tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    mean, rstd, weight, bias = _group_params(mean_ptr, rstd_ptr, w_ptr, b_ptr, g, offs_c, c_mask, C, HAS_AFFINE)
    acc_dz = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
    acc_dzx = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
    for r0 in range(0, ROWS, BLOCK_HW):
        xhat, dz, _, _, _ = _grad_tile(
            x_ptr, dy_ptr, dyp_ptr, dyr_ptr, mean, rstd, weight, bias, seed_ptr, g, r0 + tl.arange(0, BLOCK_HW),
            offs_c, c_mask, C, HW, ROWS, H, W, pad_t, pad_b, pad_l, pad_r, stride_n, stride_c, stride_hw,
            stride_dn, stride_dc, stride_dhw, stride_pn, stride_pc, stride_phw, stride_rn, stride_rc, stride_rhw,
            negative_slope, dropout_p, HAS_ACT, HAS_DROPOUT, HAS_DY, PAD, RELU_OUT)
        acc_dz += dz
        acc_dzx += dz * xhat
    sum_dz, sum_dzx = tl.sum(acc_dz, axis=0), tl.sum(acc_dzx, axis=0)
    tl.store(sum_dz_ptr + g * C + offs_c, sum_dz, mask=c_mask)
    tl.store(sum_dzx_ptr + g * C + offs_c, sum_dzx, mask=c_mask)
    if INPUT_GRAD:
        mean_dz, mean_dzx = sum_dz[None, :] / ROWS, sum_dzx[None, :] / ROWS
        for r0 in range(0, ROWS, BLOCK_HW):
            xhat, dz, dout, mask, offsets = _grad_tile(
                x_ptr, dy_ptr, dyp_ptr, dyr_ptr, mean, rstd, weight, bias, seed_ptr, g, r0 + tl.arange(0, BLOCK_HW),
                offs_c, c_mask, C, HW, ROWS, H, W, pad_t, pad_b, pad_l, pad_r, stride_n, stride_c, stride_hw,
                stride_dn, stride_dc, stride_dhw, stride_pn, stride_pc, stride_phw, stride_rn, stride_rc, stride_rhw,
                negative_slope, dropout_p, HAS_ACT, HAS_DROPOUT, HAS_DY, PAD, RELU_OUT)
            _store_dx(dx_ptr, dr_ptr, xhat, dz, dout, mask, offsets, rstd, weight, mean_dz, mean_dzx, BATCH_STATS,
                      RESIDUAL)


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


def _groups(x, per_sample):
    """(GROUPS, ROWS): statistics per sample over H*W (InstanceNorm), or over the whole batch (BatchNorm)."""
    N, C, H, W = x.shape
    return (N, H * W) if per_sample else (1, N * H * W)


def _tiling(x, rows):
    """BLOCK_C x BLOCK_HW tile and warps: channels inner when C is the unit-stride axis, rows inner otherwise."""
    C = x.shape[1]
    rows_pow2, c_pow2 = next_power_of_2(rows), next_power_of_2(C)
    tile = 2048
    if x.stride(1) == 1 and C > 1:
        block_c = min(c_pow2, max(64, tile // rows_pow2))
        block_hw = min(rows_pow2, max(16, tile // block_c))
    else:
        block_hw = min(rows_pow2, tile)
        block_c = min(c_pow2, tile // block_hw)
    num_warps = 8 if block_c * block_hw >= 2048 else 4
    return block_c, block_hw, num_warps


def _split_plan(x, groups, rows, block_c, block_hw):
    """Split each group's rows into SPLITS chunks of CHUNK rows (a multiple of BLOCK_HW) to fill the GPU.

    One split means one program per channel block covers its whole group: the one-launch kernels then do the
    work of the partial (and its combine) and apply kernels, which at small layers (the U-Net's inner levels,
    batch 1) saves a launch per pass, the cost that dominates there.
    """
    base_programs = cdiv(x.shape[1], block_c) * groups
    splits = max(1, min(cdiv(target_programs(x.device), base_programs), cdiv(rows, block_hw)))
    chunk = cdiv(cdiv(rows, splits), block_hw) * block_hw
    return cdiv(rows, chunk), chunk


def _combine_rows(splits, block_c):
    """BLOCK_R of a last-program combine: all chunks in one [BLOCK_R, BLOCK_C] tile when they fit (no serial loop)."""
    return min(next_power_of_2(splits), max(16, 8192 // block_c))


_TICKETS = {}


def _tickets(device, count):
    """At least `count` zeroed int32 counters for _last_to_finish on `device`, shared by every launch: each
    launch leaves them zero, and launches run in stream order. A larger buffer is added when one is needed;
    the smaller ones stay alive, since a CUDA graph captured with them keeps using them."""
    buffers = _TICKETS.setdefault(device, [])
    if not buffers or buffers[-1].numel() < count:
        buffers.append(torch.zeros(max(count, 4096), dtype=torch.int32, device=device))
    return buffers[-1]


def _check_batch_stats_size(x, per_sample):
    N, C, H, W = x.shape
    if per_sample and H * W <= 1:
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.shape}")
    if not per_sample and N * H * W <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")


def _pad_geometry(x, padding):
    """Kernel arguments (H, W, pad_t, pad_b, pad_l, pad_r) of x's plane and its output's padding
    (left, right, top, bottom), None for none."""
    if padding is None:
        return (x.shape[2], x.shape[3], 0, 0, 0, 0)
    check_padding(x, padding)
    left, right, top, bottom = padding
    return (x.shape[2], x.shape[3], top, bottom, left, right)


def _padded_empty(x, geometry):
    """An empty tensor of x's reflection-padded shape, in x's memory format and dtype."""
    N, C, H, W = x.shape
    _, _, top, bottom, left, right = geometry
    return torch.empty((N, C, H + top + bottom, W + left + right), device=x.device, dtype=x.dtype,
                       memory_format=memory_format_of(x))


def _dense(x):
    """x itself when it is NCHW- or channels-last-contiguous, else a contiguous copy: the kernels walk x, its
    output, the residual, dx and the residual's gradient with x's strides, and empty_like(x) has them only for a
    dense x (a channel slice, say, is not)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _with_strides_of(t, like):
    """t with `like`'s strides (t itself when it has them, a copy otherwise): the kernels walk both with one set."""
    if t is None or t.stride() == like.stride():
        return t
    return torch.empty_like(like, dtype=t.dtype).copy_(t)


def norm_act_forward(x, weight, bias, running_mean, running_var, rng_state, *, per_sample, use_batch_stats,
                     momentum, eps, negative_slope, dropout_p, padding=None, keep_unpadded=False, residual=None,
                     relu_out=None, plain=True, batches_tracked=None):
    """Normalize x [N, C, H, W] (NCHW or channels-last), apply affine, LeakyReLU/ReLU and dropout.

    per_sample: statistics per (n, c) (InstanceNorm) instead of per c (BatchNorm).
    use_batch_stats: statistics of x; running_mean/running_var (if given) are then updated in place.
        Otherwise running_mean/running_var are used (BatchNorm eval).
    negative_slope: None for identity, 0.0 for ReLU, 0.2 for the reference's LeakyReLU.
    rng_state: int64 device tensor [1], the Philox key when dropout_p > 0; the caller advances it.
    padding: (left, right, top, bottom) to write the output reflection-padded, as nn.ReflectionPad2d after this
        layer would, without a pass of its own: instead of the plain output, or besides it with keep_unpadded.
    residual: a tensor of x's shape added to the output (a ResnetBlock's skip), None for none.
    relu_out: a tensor of x's shape (any strides whose H and W flatten: a channel slice of a U-Net skip
        concatenation) that receives relu(output), None for none; not with residual.
    plain: whether to write the plain output at all (False when relu_out is all the caller needs).
    batches_tracked: int64 [] device tensor incremented with the running statistics (num_batches_tracked).
    Returns (y, y_padded, mean, rstd): the output and its padded form in x's layout and dtype (y is None when
    only the padded form is asked for, y_padded without padding), mean/rstd fp32 [GROUPS, C] for backward
    (GROUPS = N per sample, else 1).
    """
    x = _dense(x)
    N, C, H, W = x.shape
    HW = H * W
    groups, rows = _groups(x, per_sample)
    block_c, block_hw, num_warps = _tiling(x, rows)
    c_blocks = cdiv(C, block_c)
    geometry = _pad_geometry(x, padding)
    if relu_out is not None and residual is not None:
        raise ValueError("relu_out takes the sign of the output before the residual: not both")
    y = torch.empty_like(x) if (padding is None and plain) or keep_unpadded else None
    y_padded = None if padding is None else _padded_empty(x, geometry)
    residual = _with_strides_of(residual, x)
    walked = x if padding is None else y_padded  # the output the apply tiles walk
    out_rows = rows // HW * walked.shape[2] * walked.shape[3]
    has_affine = weight is not None
    dummy = walked  # stands in for pointers a specialization never reads
    tensors = (x, dummy if y is None else y, dummy if y_padded is None else y_padded,
               dummy if residual is None else residual, dummy if relu_out is None else relu_out)
    pointers = (weight if has_affine else dummy, bias if has_affine else dummy, rng_state if dropout_p > 0 else dummy)
    strides = (*_strides(x), *_strides(walked), *_strides(x if relu_out is None else relu_out))
    scalars = (0.0 if negative_slope is None else negative_slope, dropout_p)
    flags = dict(HAS_AFFINE=has_affine, HAS_ACT=negative_slope is not None, HAS_DROPOUT=dropout_p > 0,
                 RESIDUAL=residual is not None, WRITE_Y=y is not None, PAD=padding is not None,
                 RELU_OUT=relu_out is not None, BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps)
    if not use_batch_stats:
        mean = running_mean.to(torch.float32, copy=True)[None]
        rstd = torch.rsqrt(running_var.float() + eps)[None]
    else:
        _check_batch_stats_size(x, per_sample)
        mean = torch.empty((groups, C), device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        update_running = running_mean is not None
        if update_running and batches_tracked is None:
            batches_tracked = torch.zeros((), dtype=torch.int64, device=x.device)  # a count nobody reads
        running = (running_mean, running_var, batches_tracked) if update_running else (mean, rstd, mean)
        splits, chunk = _split_plan(x, groups, rows, block_c, block_hw)
        if splits == 1:
            _forward_group_kernel[(c_blocks, groups)](
                *tensors, mean, rstd, *running, *pointers, C, HW, rows, out_rows, *geometry, *strides, eps, momentum,
                *scalars, UPDATE_RUNNING=update_running, **flags)
            return y, y_padded, mean, rstd
        part_mean = torch.empty((groups, splits, C), device=x.device, dtype=torch.float32)
        part_m2 = torch.empty_like(part_mean)
        _stats_partial_kernel[(c_blocks, groups, splits)](
            x, part_mean, part_m2, _tickets(x.device, groups * c_blocks), mean, rstd, *running,
            C, HW, rows, chunk, splits, *_strides(x), eps, momentum, UPDATE_RUNNING=update_running,
            BLOCK_HW=block_hw, BLOCK_C=block_c, BLOCK_R=_combine_rows(splits, block_c), num_warps=num_warps)
    _forward_apply_kernel[(c_blocks, mean.shape[0], cdiv(out_rows, block_hw))](
        *tensors, mean, rstd, *pointers, C, HW, out_rows, *geometry, *strides, *scalars, **flags)
    return y, y_padded, mean, rstd


def norm_act_backward(dy, dy_padded, x, weight, bias, mean, rstd, rng_state, *, per_sample, use_batch_stats,
                      negative_slope, dropout_p, padding=None, dy_relu=None, need_input_grad=True,
                      need_affine_grad=True, need_residual_grad=False):
    """Gradients (dx, dweight, dbias, dresidual) of norm_act_forward from those of its outputs, dy of y,
    dy_padded of y_padded and dy_relu of relu_out (None for an output without one); rng_state must hold the key
    the forward used, and padding its padding.

    dx is None unless need_input_grad; dweight/dbias are None without affine or need_affine_grad; dresidual, the
    output's whole gradient, is None unless need_residual_grad.
    """
    x = _dense(x)
    C = x.shape[1]
    HW = x.shape[2] * x.shape[3]
    groups, rows = _groups(x, per_sample)
    block_c, block_hw, num_warps = _tiling(x, rows)
    c_blocks = cdiv(C, block_c)
    has_affine = weight is not None
    need_affine_grad = need_affine_grad and has_affine
    input_pass = need_input_grad or need_residual_grad
    if not (input_pass or need_affine_grad) or (dy is None and dy_padded is None and dy_relu is None):
        return None, None, None, None
    geometry = _pad_geometry(x, padding)
    dx = torch.empty_like(x) if input_pass else None
    dresidual = torch.empty_like(x) if need_residual_grad else None
    dummy = mean  # stands in for pointers a specialization never reads
    grads = (dummy if dy is None else dy, dummy if dy_padded is None else dy_padded,
             dummy if dy_relu is None else dy_relu)
    outs = (dummy if dx is None else dx, dummy if dresidual is None else dresidual)
    pointers = (mean, rstd, weight if has_affine else dummy, bias if has_affine else dummy,
                rng_state if dropout_p > 0 else dummy)
    strides = tuple(stride for t in (x, dy, dy_padded, dy_relu) for stride in _strides(x if t is None else t))
    scalars = (0.0 if negative_slope is None else negative_slope, dropout_p)
    flags = dict(HAS_AFFINE=has_affine, HAS_ACT=negative_slope is not None, HAS_DROPOUT=dropout_p > 0,
                 HAS_DY=dy is not None, PAD=dy_padded is not None, RELU_OUT=dy_relu is not None,
                 BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps)
    stats_groups = mean.shape[0]  # 1 for BatchNorm, in training and eval alike
    if not ((input_pass and use_batch_stats) or need_affine_grad):  # BatchNorm eval, input gradients only
        _backward_apply_kernel[(c_blocks, stats_groups, cdiv(rows, block_hw))](
            x, *grads, *outs, *pointers, dummy, dummy, C, HW, rows, *geometry, *strides, *scalars,
            BATCH_STATS=False, RESIDUAL=need_residual_grad, **flags)
        return (dx if need_input_grad else None), None, None, dresidual
    sum_dz = torch.empty((groups, C), device=x.device, dtype=torch.float32)
    sum_dzx = torch.empty_like(sum_dz)
    splits, chunk = _split_plan(x, groups, rows, block_c, block_hw)
    if splits == 1:
        _backward_group_kernel[(c_blocks, groups)](
            x, *grads, *outs, *pointers, sum_dz, sum_dzx, C, HW, rows, *geometry, *strides, *scalars,
            BATCH_STATS=use_batch_stats, RESIDUAL=need_residual_grad, INPUT_GRAD=input_pass, **flags)
    else:
        part_dz = torch.empty((groups, splits, C), device=x.device, dtype=torch.float32)
        part_dzx = torch.empty_like(part_dz)
        _backward_partial_kernel[(c_blocks, groups, splits)](
            x, *grads, *pointers, part_dz, part_dzx, _tickets(x.device, groups * c_blocks), sum_dz, sum_dzx,
            C, HW, rows, chunk, splits, *geometry, *strides, *scalars, BLOCK_R=_combine_rows(splits, block_c),
            **flags)
        if input_pass:
            _backward_apply_kernel[(c_blocks, groups, cdiv(rows, block_hw))](
                x, *grads, *outs, *pointers, sum_dz, sum_dzx, C, HW, rows, *geometry, *strides, *scalars,
                BATCH_STATS=use_batch_stats, RESIDUAL=need_residual_grad, **flags)
    dweight = dbias = None
    if need_affine_grad:  # BatchNorm has one group (no extra launch); an affine InstanceNorm sums its N groups
        dweight = (sum_dzx[0] if groups == 1 else sum_dzx.sum(0)).to(weight.dtype)
        dbias = (sum_dz[0] if groups == 1 else sum_dz.sum(0)).to(bias.dtype)
    return (dx if need_input_grad else None), dweight, dbias, dresidual


class NormActFunction(torch.autograd.Function):
    """Autograd wrapper of norm_act_forward/norm_act_backward (x, residual, skip, weight, bias get gradients).

    Returns, in this order, those of y, y_padded (padding; both with keep_unpadded) and a U-Net skip
    concatenation that it writes:
    - skip_width > 0 opens one: a new [N, C + skip_width, H, W] tensor whose first C channels get relu(output)
      (the parent level's ReLU applied to the skip half), the rest left for the inner level to fill;
    - skip, such a tensor, is closed: its last C channels get relu(output) in place (the parent's ReLU applied
      to this level's output) and it is returned, with no plain output. Its gradient passes back whole to the
      layer that opened it, which reads only its own channels.
    """

    @staticmethod
    def forward(ctx, x, residual, skip, weight, bias, running_mean, running_var, batches_tracked, rng_state,
                per_sample, use_batch_stats, momentum, eps, negative_slope, dropout_p, padding, keep_unpadded,
                skip_width):
        seed = None
        if dropout_p > 0:
            seed = rng_state.clone()  # the key this call uses, kept for backward
            rng_state.add_(1)  # advanced on device: no host sync, so it can run inside a CUDA graph
        channels, closing = x.shape[1], skip is not None
        if closing:
            ctx.mark_dirty(skip)
            ctx.skip_channels = slice(skip.shape[1] - channels, None)
        elif skip_width:
            skip = torch.empty((x.shape[0], channels + skip_width, *x.shape[2:]), device=x.device, dtype=x.dtype,
                               memory_format=memory_format_of(x))
            ctx.skip_channels = slice(0, channels)
        y, y_padded, mean, rstd = norm_act_forward(
            x, weight, bias, running_mean, running_var, seed, per_sample=per_sample,
            use_batch_stats=use_batch_stats, momentum=momentum, eps=eps, negative_slope=negative_slope,
            dropout_p=dropout_p, padding=padding, keep_unpadded=keep_unpadded, residual=residual,
            relu_out=None if skip is None else skip[:, ctx.skip_channels], plain=not closing,
            batches_tracked=batches_tracked)
        ctx.save_for_backward(x, weight, bias, mean, rstd, seed)
        ctx.options = dict(per_sample=per_sample, use_batch_stats=use_batch_stats, negative_slope=negative_slope,
                           dropout_p=dropout_p, padding=padding)
        ctx.outputs = (y is not None, y_padded is not None, skip is not None)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zero-filled tensor
        outputs = tuple(t for t in (y, y_padded, skip) if t is not None)
        return outputs if len(outputs) > 1 else outputs[0]

    @staticmethod
    def backward(ctx, *grads):
        grads = iter(grads)
        dy, dy_padded, dskip = (next(grads) if present else None for present in ctx.outputs)
        x, weight, bias, mean, rstd, seed = ctx.saved_tensors
        dx, dweight, dbias, dresidual = norm_act_backward(
            dy, dy_padded, x, weight, bias, mean, rstd, seed,
            dy_relu=None if dskip is None else dskip[:, ctx.skip_channels], need_input_grad=ctx.needs_input_grad[0],
            need_residual_grad=ctx.needs_input_grad[1],
            need_affine_grad=ctx.needs_input_grad[3] or ctx.needs_input_grad[4], **ctx.options)
        return (dx, dresidual, dskip if ctx.needs_input_grad[2] else None, dweight, dbias) + (None,) * 13


class FusedNormAct(nn.Module):
    """BatchNorm2d / InstanceNorm2d followed by identity, ReLU or LeakyReLU, optional dropout and an optional
    reflection pad (``padding``: (left, right, top, bottom), as nn.ReflectionPad2d.padding), fused.

    With ``keep_unpadded`` the module returns the plain output, carrying the padded one for the
    FusedReflectionPad2d that pads it next (see pad.with_padded_twin): a ResNet layer whose output feeds both a
    ResnetBlock's skip and its padded conv. ``forward(x, residual)`` adds a ResnetBlock's skip to the output.
    U-Net skips (see NormActFunction): with ``skip_width`` the module opens the concatenation its inner level
    returns, carried by its plain output as ``fastp2p_skip``; with ``closes_skip``, ``forward(x, skip=...)``
    fills it and returns it.

    Parameters and buffers carry the names of the norm module it replaces, so state_dict keys (and
    checkpoints) are unchanged; the dropout key ``dropout_seed`` is a non-persistent buffer.
    """

    def __init__(self, num_features, norm="batch", activation="identity", negative_slope=0.2, dropout=0.0,
                 eps=1e-5, momentum=0.1, padding=None, keep_unpadded=False, skip_width=0, closes_skip=False,
                 device=None, dtype=None):
        super().__init__()
        if norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if momentum is None:
            raise NotImplementedError("cumulative moving average (momentum=None) is not supported")
        self.num_features, self.norm, self.activation = num_features, norm, activation
        self.negative_slope, self.dropout, self.eps, self.momentum = negative_slope, dropout, eps, momentum
        self.padding = None if padding is None else tuple(padding)
        self.keep_unpadded = keep_unpadded
        self.skip_width, self.closes_skip = skip_width, closes_skip
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

    def forward(self, x, residual=None, skip=None):
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"expected [N, {self.num_features}, H, W], got {tuple(x.shape)}")
        use_batch_stats = self.training or not self.track_running_stats
        update_running = self.training and self.track_running_stats
        if self.dropout_seed.device != x.device:  # e.g. built from a buffer-less InstanceNorm2d on the CPU
            self.dropout_seed = self.dropout_seed.to(x.device)
        slope = {"identity": None, "relu": 0.0, "leaky_relu": self.negative_slope}[self.activation]
        if self.closes_skip != (skip is not None):
            raise ValueError("a layer that closes a U-Net skip needs the skip tensor its outer level opened, "
                             "and only such a layer takes one")
        out = NormActFunction.apply(
            x, residual, skip, self.weight, self.bias,
            self.running_mean if not use_batch_stats or update_running else None,
            self.running_var if not use_batch_stats or update_running else None,
            self.num_batches_tracked if update_running else None, self.dropout_seed,
            self.norm == "instance", use_batch_stats, self.momentum, self.eps, slope,
            self.dropout if self.training else 0.0, self.padding, self.keep_unpadded, self.skip_width)
        if self.padding is not None and self.keep_unpadded:
            y, y_padded = out
            return with_padded_twin(y, self.padding, y_padded)
        if self.skip_width:
            y, opened = out
            y.fastp2p_skip = opened
            return y
        return out

    def extra_repr(self):
        return (f"{self.num_features}, norm={self.norm}, activation={self.activation}, "
                f"negative_slope={self.negative_slope}, dropout={self.dropout}, eps={self.eps}, "
                f"momentum={self.momentum}" + ("" if self.padding is None else f", padding={self.padding}")
                + (", keep_unpadded=True" if self.keep_unpadded else "")
                + (f", skip_width={self.skip_width}" if self.skip_width else "")
                + (", closes_skip=True" if self.closes_skip else ""))
