"""Triton kernels of the fused InstanceNorm2d / BatchNorm2d + identity/ReLU/LeakyReLU (+ dropout) (+ reflection
pad), forward (the backward's are in norm_act_backward_kernels.py); norm_act.py chooses which to launch and how,
norm_act_module.py wraps them.

Every conv of the pix2pix U-Net and the CycleGAN ResNet generator is followed by (norm, activation[, dropout]).
Eager PyTorch runs these as separate kernels, and its InstanceNorm copies channels-last inputs to NCHW. Here one
strided [rows x C] tiling serves both layouts: in NCHW and in NHWC alike ``stride_h == W * stride_w``, so H and W
flatten into one axis with stride ``stride_w`` and nothing is copied. A statistics group is one sample's H*W rows
(InstanceNorm) or all N*H*W rows of the batch (BatchNorm).

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

import triton
import triton.language as tl

from .pad import reflect


@triton.jit
def row_offsets(g, rows, HW, stride_n, stride_hw):
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
    return (rows // HW_out) * HW + reflect(h, H) * W + reflect(w, W), inner


@triton.jit
def pre_activation(x, mean, rstd, weight, bias):
    """xhat = (x - mean) * rstd and z = xhat * weight + bias, all [BLOCK_HW, BLOCK_C] or broadcast [1, BLOCK_C]."""
    xhat = (x - mean) * rstd
    return xhat, xhat * weight + bias


@triton.jit
def dropout_keep(seed_ptr, g, rows, offs_c, C, HW, dropout_p):
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
def group_values(ptr, g, offs_c, c_mask, C):
    """A [GROUPS, C] fp32 statistic of group g as [1, BLOCK_C]."""
    return tl.load(ptr + g * C + offs_c, mask=c_mask, other=0.0)[None, :]


@triton.jit
def group_params(mean_ptr, rstd_ptr, w_ptr, b_ptr, g, offs_c, c_mask, C, HAS_AFFINE: tl.constexpr):
    """Group g's mean and rstd and the affine weight and bias of the tile's channels, each [1, BLOCK_C] fp32."""
    weight, bias = _channel_params(w_ptr, b_ptr, offs_c, c_mask, HAS_AFFINE)
    return (group_values(mean_ptr, g, offs_c, c_mask, C), group_values(rstd_ptr, g, offs_c, c_mask, C),
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
    pivot = tl.load(cols + row_offsets(g, first, HW, stride_n, stride_hw)[:, None], mask=c_mask[None, :],
                    other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
    acc_sq = tl.zeros([BLOCK_HW, BLOCK_C], tl.float32)
    for r0 in range(start, end, BLOCK_HW):
        rows = r0 + tl.arange(0, BLOCK_HW)
        mask = (rows < end)[:, None] & c_mask[None, :]
        x = tl.load(cols + row_offsets(g, rows, HW, stride_n, stride_hw)[:, None], mask=mask, other=0.0)
        x = tl.where(mask, x.to(tl.float32) - pivot, 0.0)
        acc += x
        acc_sq += x * x
    count = tl.zeros([BLOCK_C], tl.float32) + (end - start).to(tl.float32)
    total = tl.sum(acc, axis=0)
    mean = total / count
    m2 = tl.maximum(tl.sum(acc_sq, axis=0) - total * mean, 0.0)
    return mean + tl.reshape(pivot, [BLOCK_C]), m2, count


@triton.jit
def finish_stats(mean, m2, count, mean_ptr, rstd_ptr, running_mean_ptr, running_var_ptr, batches_ptr, g, pid_c,
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
    offsets = row_offsets(g, src, HW, stride_n, stride_hw)[:, None] + offs_c[None, :] * stride_c
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    _, out = pre_activation(x, mean, rstd, weight, bias)
    if HAS_ACT:
        out = tl.where(out > 0, out, out * negative_slope)
    if HAS_DROPOUT:
        keep = dropout_keep(seed_ptr, g, src, offs_c, C, HW, dropout_p)
        out = tl.where(keep, out / (1.0 - dropout_p), 0.0)
    if RESIDUAL:
        out += tl.load(r_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    if RELU_OUT:
        tl.store(yr_ptr + row_offsets(g, src, HW, stride_rn, stride_rhw)[:, None] + offs_c[None, :] * stride_rc,
                 tl.maximum(out, 0.0).to(yr_ptr.dtype.element_ty), mask=mask)
    if PAD:
        HW_out = (H + pad_t + pad_b) * (W + pad_l + pad_r)
        tl.store(yp_ptr + row_offsets(g, rows, HW_out, stride_pn, stride_phw)[:, None] + offs_c[None, :] * stride_pc,
                 out.to(yp_ptr.dtype.element_ty), mask=mask)
        if WRITE_Y:
            tl.store(y_ptr + offsets, out.to(y_ptr.dtype.element_ty), mask=mask & inner[:, None])
    elif WRITE_Y:
        tl.store(y_ptr + offsets, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def last_to_finish(tickets_ptr, g, pid_c, SPLITS):
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
def stats_partial_kernel(
    x_ptr,  # [N, C, HW] through strides, any float dtype
    part_mean_ptr,  # [GROUPS, SPLITS, C] fp32, out: mean of each chunk of a group's rows
    part_m2_ptr,  # [GROUPS, SPLITS, C] fp32, out: sum of squared deviations of each chunk
    tickets_ptr,  # [GROUPS, C_BLOCKS] int32, zero: see last_to_finish
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
    if last_to_finish(tickets_ptr, g, pid_c, SPLITS):
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
        finish_stats(mean + pivot, m2, count, mean_ptr, rstd_ptr, running_mean_ptr, running_var_ptr, batches_ptr,
                      g, pid_c, offs_c, c_mask, C, eps, momentum, UPDATE_RUNNING)


@triton.jit
def forward_apply_kernel(
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
    pid_r, g, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # row blocks: the grid's unbounded axis
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    mean, rstd, weight, bias = group_params(mean_ptr, rstd_ptr, w_ptr, b_ptr, g, offs_c, c_mask, C, HAS_AFFINE)
    _apply_tile(x_ptr, y_ptr, yp_ptr, r_ptr, yr_ptr, mean, rstd, weight, bias, seed_ptr, g,
                pid_r * BLOCK_HW + tl.arange(0, BLOCK_HW), offs_c, c_mask, C, HW, OUT_ROWS,
                H, W, pad_t, pad_b, pad_l, pad_r, stride_n, stride_c, stride_hw, stride_pn, stride_pc, stride_phw,
                stride_rn, stride_rc, stride_rhw, negative_slope, dropout_p, HAS_ACT, HAS_DROPOUT, RESIDUAL, WRITE_Y,
                PAD, RELU_OUT)


@triton.jit
def forward_group_kernel(
    x_ptr, y_ptr, yp_ptr, r_ptr, yr_ptr,  # as in forward_apply_kernel
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
    rstd = finish_stats(mean, m2, count, mean_ptr, rstd_ptr, running_mean_ptr, running_var_ptr, batches_ptr, g,
                         pid_c, offs_c, c_mask, C, eps, momentum, UPDATE_RUNNING)
    weight, bias = _channel_params(w_ptr, b_ptr, offs_c, c_mask, HAS_AFFINE)
    for r0 in range(0, OUT_ROWS, BLOCK_HW):
        _apply_tile(x_ptr, y_ptr, yp_ptr, r_ptr, yr_ptr, mean[None, :], rstd[None, :], weight, bias, seed_ptr, g,
                    r0 + tl.arange(0, BLOCK_HW), offs_c, c_mask, C, HW, OUT_ROWS, H, W, pad_t, pad_b, pad_l, pad_r,
                    stride_n, stride_c, stride_hw, stride_pn, stride_pc, stride_phw, stride_rn, stride_rc, stride_rhw,
                    negative_slope, dropout_p, HAS_ACT, HAS_DROPOUT, RESIDUAL, WRITE_Y, PAD, RELU_OUT)
