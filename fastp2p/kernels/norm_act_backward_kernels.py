"""The fused norm + activation's backward kernels: the sums of dz and dz * xhat per group (split like the forward's
statistics, the last program to finish combining them), and dx from them. The forward kernels and the helpers both
share are in norm_act_kernels.py."""

import triton
import triton.language as tl

from .norm_act_kernels import dropout_keep, group_params, group_values, last_to_finish, pre_activation, row_offsets
from .pad import reflected_grad


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
    offsets = row_offsets(g, rows, HW, stride_n, stride_hw)[:, None] + offs_c[None, :] * stride_c
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    xhat, z = pre_activation(x, mean, rstd, weight, bias)
    if HAS_DROPOUT:
        keep = dropout_keep(seed_ptr, g, rows, offs_c, C, HW, dropout_p)
    dout = tl.zeros_like(x)
    if HAS_DY:
        dy_offsets = row_offsets(g, rows, HW, stride_dn, stride_dhw)[:, None] + offs_c[None, :] * stride_dc
        dout += tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(tl.float32)
    if PAD:
        pos = rows % HW
        sample_ptr = dyp_ptr + (g + rows // HW).to(tl.int64) * stride_pn
        dout += reflected_grad(sample_ptr, pos // W, pos % W, H, W, pad_t, pad_b, pad_l, pad_r, offs_c,
                                (W + pad_l + pad_r) * stride_phw, stride_phw, stride_pc, mask)
    if RELU_OUT:
        # where the output is positive: z > 0, whatever the activation (dropped elements get no gradient anyway)
        dyr = tl.load(dyr_ptr + row_offsets(g, rows, HW, stride_rn, stride_rhw)[:, None] + offs_c[None, :] * stride_rc,
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
def backward_partial_kernel(
    x_ptr,  # [N, C, HW] through strides stride_n, stride_c, stride_hw
    dy_ptr,  # [N, C, HW] through strides stride_d*: the output's gradient, read when HAS_DY
    dyp_ptr,  # [N, C, HW_out] through strides stride_p*: the padded output's gradient, read when PAD
    dyr_ptr,  # [N, C, HW] through strides stride_r*: relu(output)'s gradient, read when RELU_OUT
    mean_ptr, rstd_ptr,  # [GROUPS, C] fp32
    w_ptr, b_ptr, seed_ptr,
    part_dz_ptr,  # [GROUPS, SPLITS, C] fp32, out: sum of dz over each chunk
    part_dzx_ptr,  # [GROUPS, SPLITS, C] fp32, out: sum of dz * xhat over each chunk
    tickets_ptr,  # [GROUPS, C_BLOCKS] int32, zero: see last_to_finish
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
    mean, rstd, weight, bias = group_params(mean_ptr, rstd_ptr, w_ptr, b_ptr, g, offs_c, c_mask, C, HAS_AFFINE)
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
    if last_to_finish(tickets_ptr, g, pid_c, SPLITS):
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
def backward_apply_kernel(
    x_ptr, dy_ptr, dyp_ptr, dyr_ptr,  # as in backward_partial_kernel
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
    pid_r, g, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)  # row blocks: the grid's unbounded axis
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = offs_c < C
    rows = pid_r * BLOCK_HW + tl.arange(0, BLOCK_HW)
    mean, rstd, weight, bias = group_params(mean_ptr, rstd_ptr, w_ptr, b_ptr, g, offs_c, c_mask, C, HAS_AFFINE)
    xhat, dz, dout, mask, offsets = _grad_tile(
        x_ptr, dy_ptr, dyp_ptr, dyr_ptr, mean, rstd, weight, bias, seed_ptr, g, rows, offs_c, c_mask, C, HW, ROWS,
        H, W, pad_t, pad_b, pad_l, pad_r, stride_n, stride_c, stride_hw, stride_dn, stride_dc, stride_dhw,
        stride_pn, stride_pc, stride_phw,
        stride_rn, stride_rc, stride_rhw, negative_slope, dropout_p, HAS_ACT, HAS_DROPOUT, HAS_DY, PAD, RELU_OUT)
    mean_dz = mean  # placeholders, unused without batch statistics
    mean_dzx = mean
    if BATCH_STATS:
        mean_dz = group_values(sum_dz_ptr, g, offs_c, c_mask, C) / ROWS
        mean_dzx = group_values(sum_dzx_ptr, g, offs_c, c_mask, C) / ROWS
    _store_dx(dx_ptr, dr_ptr, xhat, dz, dout, mask, offsets, rstd, weight, mean_dz, mean_dzx, BATCH_STATS, RESIDUAL)


@triton.jit
def backward_group_kernel(
    x_ptr, dy_ptr, dyp_ptr, dyr_ptr, dx_ptr, dr_ptr,  # as in backward_apply_kernel; dx, dr only when INPUT_GRAD
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
    mean, rstd, weight, bias = group_params(mean_ptr, rstd_ptr, w_ptr, b_ptr, g, offs_c, c_mask, C, HAS_AFFINE)
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
