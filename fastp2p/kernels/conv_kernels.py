"""Triton kernels of the implicit-GEMM convolution with a norm prologue and a statistics epilogue; conv.py plans and
launches them, conv_module.py wraps them.

Every convolution of the U-Net, the ResNet generator and the PatchGAN is followed by a norm. Here the conv that
produces a norm's input also writes, per output tile, the mean and the sum of squared deviations of each channel
over the tile's rows (rows of one sample, so InstanceNorm and BatchNorm groups both are unions of tiles): no
statistics pass reads the output again, and the last tile of a group (sample, or batch) and channel block to
finish combines the group's tiles into its mean and rstd and updates BatchNorm's running statistics, so no combine
kernel runs either. The conv that consumes the normalized activation normalizes it while it loads its input tile,
(x - mean) * rstd * weight + bias and the (Leaky)ReLU, so the activation is never written; a reflection pad before
it becomes reflected indices. Tensors are walked through their strides, so NCHW and NHWC
both work; the reduction axis is (tap, channel) with the channel fastest, which reads NHWC rows contiguously. The
index arithmetic within a sample is in INDEX (int32 on a GPU; int64 in the interpreter, which checks every narrower
integer operation for overflow, at a cost), the sample offsets in int64.

Backward, by bytes moved per layer of activation size A: the norm's backward needs the sums over each group of dz
and dz * xhat (dz the gradient of the norm's affine output), then applies dx from them. Done apart, the reduction
pass reads x and the activation's gradient da (2A) after the input-gradient conv wrote da (A), and the apply pass
reads both again and writes dx (3A). The input-gradient conv holds each da tile in registers as it finishes it:
with NORM_GRAD it loads x there (A), applies the activation's derivative and adds the tile's sums, combined by the
group's last tile like the statistics, so the reduction pass and its launch go (6A -> 5A, da's write included). The
weight gradient kernel never sees da, so the norm's backward has nothing to share with it.

conv_kernel computes a convolution or a transposed convolution. The transposed one runs per output parity class
(oh % stride, ow % stride): within a class the taps that reach an output are fixed, so no product is masked out
the way a scatter-as-gather over all taps would. The same kernel gives the input gradients: a convolution's is the
transposed convolution of dy with the roles of the weight's two channel axes swapped, and the reverse.
conv_wgrad_kernel computes the weight gradient as a GEMM over the positions of one operand's grid, the other
gathered through the conv's taps, per sample and split into chunks; the last chunk of a weight tile to finish adds
the chunks' partial sums in a fixed order (no separate sum, and the same result in every run).
"""

import triton
import triton.language as tl

from .norm_act_kernels import finish_stats, last_to_finish
from .pad import reflect


@triton.jit
def _normalized(v, n, c, c_ok, mean_ptr, rstd_ptr, nw_ptr, nb_ptr, group_stride, HAS_AFFINE: tl.constexpr):
    """xhat = (v - mean) * rstd and z = xhat * weight + bias, the norm's output before the activation.

    v: [R, K]; the statistics of sample n ([GROUPS, C], row n * group_stride) and the affine parameters are loaded
    per column, for channels c ([K], masked by c_ok), and broadcast over the rows.
    """
    stat = n * group_stride + c
    xhat = ((v - tl.load(mean_ptr + stat, mask=c_ok, other=0.0)[None, :])
            * tl.load(rstd_ptr + stat, mask=c_ok, other=0.0)[None, :])
    z = xhat
    if HAS_AFFINE:
        z = (xhat * tl.load(nw_ptr + c, mask=c_ok, other=1.0).to(tl.float32)[None, :]
             + tl.load(nb_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :])
    return xhat, z


@triton.jit
def _load_input(x_ptr, n, ih, iw, c, c_ok, valid, H, W, stride_n, stride_c, stride_h, stride_w,
                mean_ptr, rstd_ptr, nw_ptr, nb_ptr, group_stride, negative_slope, REFLECT: tl.constexpr,
                PROLOGUE: tl.constexpr, HAS_AFFINE: tl.constexpr, HAS_ACT: tl.constexpr):
    """fp32 elements (n, c, ih, iw) of a conv's input as an [R, K] tile: sample n, channels c [K], positions ih and iw
    [R, K]; positions in the padding read their reflection (REFLECT) or 0, and with PROLOGUE the input is normalized
    and activated as it is loaded."""
    if REFLECT:
        ih = reflect(ih, H)
        iw = reflect(iw, W)
    else:
        valid = valid & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    offsets = n.to(tl.int64) * stride_n + (c * stride_c)[None, :] + ih * stride_h + iw * stride_w
    v = tl.load(x_ptr + offsets, mask=valid, other=0.0).to(tl.float32)
    if PROLOGUE:  # act(z) where valid, 0 elsewhere (the zero padding of the activation)
        _, v = _normalized(v, n, c, c_ok, mean_ptr, rstd_ptr, nw_ptr, nb_ptr, group_stride, HAS_AFFINE)
        if HAS_ACT:
            v = tl.where(v > 0, v, v * negative_slope)
        v = tl.where(valid, v, 0.0)
    return v


@triton.jit
def _combine_tiles(part_mean_ptr, part_m2_ptr, part_count_ptr, first, TILES, C, offs_c, c_mask,
                   BLOCK_T: tl.constexpr):
    """(mean, squared deviations, rows) of a group from its TILES tiles, tile `first` on (means and squared
    deviations [tiles, C], rows [tiles]): Chan's parallel combination, in a fixed order."""
    count = tl.zeros([BLOCK_T, 1], tl.float32)
    total = tl.zeros([BLOCK_T, offs_c.shape[0]], tl.float32)
    for t0 in range(0, TILES, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tile_count = tl.load(part_count_ptr + first + t, mask=t < TILES, other=0.0)[:, None]
        mask = (t < TILES)[:, None] & c_mask[None, :]
        count += tile_count
        total += tile_count * tl.load(part_mean_ptr + (first + t)[:, None] * C + offs_c[None, :], mask=mask,
                                      other=0.0)
    rows = tl.sum(count, axis=0)  # [1]
    mean = tl.sum(total, axis=0) / rows
    m2 = tl.zeros([BLOCK_T, offs_c.shape[0]], tl.float32)
    for t0 in range(0, TILES, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tile_count = tl.load(part_count_ptr + first + t, mask=t < TILES, other=0.0)[:, None]
        mask = (t < TILES)[:, None] & c_mask[None, :]
        offsets = (first + t)[:, None] * C + offs_c[None, :]
        deviation = tl.load(part_mean_ptr + offsets, mask=mask, other=0.0) - mean[None, :]
        m2 += tl.load(part_m2_ptr + offsets, mask=mask, other=0.0) + tile_count * deviation * deviation
    return mean, tl.sum(m2, axis=0), rows


@triton.jit
def _sum_tiles(part_a_ptr, part_b_ptr, first, TILES, C, offs_c, c_mask, BLOCK_T: tl.constexpr):
    """The sums over a group's TILES tiles, tile `first` on, of two per-tile values [tiles, C], in a fixed order."""
    total_a = tl.zeros([BLOCK_T, offs_c.shape[0]], tl.float32)
    total_b = tl.zeros([BLOCK_T, offs_c.shape[0]], tl.float32)
    for t0 in range(0, TILES, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        mask = (t < TILES)[:, None] & c_mask[None, :]
        offsets = (first + t)[:, None] * C + offs_c[None, :]
        total_a += tl.load(part_a_ptr + offsets, mask=mask, other=0.0)
        total_b += tl.load(part_b_ptr + offsets, mask=mask, other=0.0)
    return tl.sum(total_a, axis=0), tl.sum(total_b, axis=0)


@triton.jit
def _finish_group(a, b, count, out_a_ptr, out_b_ptr, running_mean_ptr, running_var_ptr, batches_ptr, g, pid_c,
                  offs_c, c_mask, C, eps, momentum, STATS: tl.constexpr, UPDATE_RUNNING: tl.constexpr):
    """Store group g's results: with STATS its mean and rstd from (mean a, squared deviations b, rows count), and
    the running statistics' update; else the sums a and b as they are."""
    if STATS:
        finish_stats(a, b, count, out_a_ptr, out_b_ptr, running_mean_ptr, running_var_ptr, batches_ptr, g, pid_c,
                      offs_c, c_mask, C, eps, momentum, UPDATE_RUNNING)
    else:
        tl.store(out_a_ptr + g * C + offs_c, a, mask=c_mask)
        tl.store(out_b_ptr + g * C + offs_c, b, mask=c_mask)


@triton.jit
def conv_kernel(
    x_ptr,  # [N, C_in, H, W] through strides: the input (pre-norm with PROLOGUE)
    w_ptr,  # weight as [C_out, C_in, KH, KW] through strides stride_wo, stride_wr, stride_wh, stride_ww, any float
    # dtype (fp32 master weights are cast to x's dtype as they are loaded: no cast kernel per forward)
    bias_ptr,  # [C_out], any float dtype, read when HAS_BIAS
    y_ptr,  # [N, C_out, OH, OW] through strides, out
    mean_ptr, rstd_ptr,  # [GROUPS, C_in] fp32 statistics of the input's norm, read with PROLOGUE
    nw_ptr, nb_ptr,  # [C_in] the input norm's affine parameters, read with HAS_AFFINE
    # with NORM_GRAD, mean_ptr to nb_ptr are those of the norm of nx instead, the output's channels
    part_a_ptr, part_b_ptr,  # [N, TILES, C_out] fp32, out: each tile's mean and squared deviations with STATS, sums
    # of dz and dz * xhat with NORM_GRAD
    part_count_ptr,  # [N, TILES] fp32, out with STATS: the rows of each tile
    tickets_ptr,  # [GROUPS, C_out blocks] int32, zero, with STATS or NORM_GRAD: see last_to_finish
    out_a_ptr, out_b_ptr,  # [GROUPS, C_out] fp32, out: the group's mean and rstd (STATS), or sums (NORM_GRAD)
    running_mean_ptr, running_var_ptr, batches_ptr,  # [C_out], [C_out], [] int64: updated when UPDATE_RUNNING
    nx_ptr,  # [N, C_out, XH, XW] through strides stride_nx*, read with NORM_GRAD: the norm's input
    C_in, H, W, C_out, OH, OW, KH, KW, STRIDE, PAD,
    TW,  # taps per kernel row that a program walks: KW, or cdiv(KW, STRIDE) with TRANSPOSED
    QW,  # output columns per program row: OW, or cdiv(OW, STRIDE) with TRANSPOSED (one parity class)
    ROWS,  # output rows of one sample (of one parity class with TRANSPOSED)
    K_TOTAL,  # taps x C_in
    group_stride, negative_slope,
    SAMPLES_PER_GROUP,  # of the output's statistics: 1 per sample (InstanceNorm), N per batch (BatchNorm)
    eps, momentum,
    XH, XW, PAD_OUT,  # with NORM_GRAD: nx's plane, and the reflection pad by which y's is larger
    stride_xn, stride_xc, stride_xh, stride_xw, stride_wo, stride_wr, stride_wh, stride_ww,
    stride_yn, stride_yc, stride_yh, stride_yw, stride_nxn, stride_nxc, stride_nxh, stride_nxw,
    TRANSPOSED: tl.constexpr, REFLECT: tl.constexpr, PROLOGUE: tl.constexpr, HAS_AFFINE: tl.constexpr,
    HAS_ACT: tl.constexpr, HAS_BIAS: tl.constexpr, STATS: tl.constexpr, UPDATE_RUNNING: tl.constexpr,
    NORM_GRAD: tl.constexpr, PRECISION: tl.constexpr, INDEX: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_T: tl.constexpr,
):
    """y[n, :, oh, ow] for one [BLOCK_M output positions, BLOCK_N channels] tile of sample n; with STATS, the tile's
    statistics, and the group's from its last tile to finish; with NORM_GRAD, y being the gradient of act(norm(nx))
    (reflection-padded by PAD_OUT), the sums of the norm's backward likewise.

    Convolution: ih = oh * STRIDE - PAD + kh. Transposed: oh = ih * STRIDE - PAD + kh, so an output of parity class
    (ph, pw) reads the taps kh = (ph + PAD) % STRIDE + STRIDE * t at ih = oh // STRIDE + (ph + PAD) // STRIDE - t.
    """
    pid_m, pid_n, n = tl.program_id(0).to(INDEX), tl.program_id(1).to(INDEX), tl.program_id(2).to(INDEX)
    m = (pid_m // (STRIDE * STRIDE if TRANSPOSED else 1)) * BLOCK_M + tl.arange(0, BLOCK_M)
    qh, qw = m // QW, m % QW
    if TRANSPOSED:
        parity = pid_m % (STRIDE * STRIDE)
        ph, pw = parity // STRIDE, parity % STRIDE
        oh, ow = qh * STRIDE + ph, qw * STRIDE + pw
    else:
        oh, ow = qh, qw
    row_ok = (m < ROWS) & (oh < OH) & (ow < OW)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < C_out
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K_TOTAL, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K).to(INDEX)
        c, tap = k % C_in, k // C_in
        th, tw = tap // TW, tap % TW
        if TRANSPOSED:
            kh, kw = (ph + PAD) % STRIDE + STRIDE * th, (pw + PAD) % STRIDE + STRIDE * tw
            ih = qh[:, None] + ((ph + PAD) // STRIDE - th)[None, :]
            iw = qw[:, None] + ((pw + PAD) // STRIDE - tw)[None, :]
        else:
            kh, kw = th, tw
            ih = oh[:, None] * STRIDE - PAD + kh[None, :]
            iw = ow[:, None] * STRIDE - PAD + kw[None, :]
        k_ok = (k < K_TOTAL) & (kh < KH) & (kw < KW)
        a = _load_input(x_ptr, n, ih, iw, c, k_ok, row_ok[:, None] & k_ok[None, :], H, W,
                        stride_xn, stride_xc, stride_xh, stride_xw, mean_ptr, rstd_ptr, nw_ptr, nb_ptr, group_stride,
                        negative_slope, REFLECT, PROLOGUE, HAS_AFFINE, HAS_ACT)
        w_offsets = offs_n[None, :] * stride_wo + (c * stride_wr + kh * stride_wh + kw * stride_ww)[:, None]
        b = tl.load(w_ptr + w_offsets, mask=k_ok[:, None] & n_ok[None, :], other=0.0).to(x_ptr.dtype.element_ty)
        acc = tl.dot(a.to(b.dtype), b, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    mask = row_ok[:, None] & n_ok[None, :]
    y_offsets = (n.to(tl.int64) * stride_yn + (oh * stride_yh + ow * stride_yw)[:, None]
                 + offs_n[None, :] * stride_yc)
    tl.store(y_ptr + y_offsets, acc.to(y_ptr.dtype.element_ty), mask=mask)
    if STATS or NORM_GRAD:
        g = n // SAMPLES_PER_GROUP
        group_tiles = SAMPLES_PER_GROUP * tl.num_programs(0)
        count = tl.sum(row_ok.to(tl.float32), axis=0)
        if STATS:
            tile_a = tl.sum(tl.where(mask, acc, 0.0), axis=0) / tl.maximum(count, 1.0)
            deviation = tl.where(mask, acc - tile_a[None, :], 0.0)
            tile_b = tl.sum(deviation * deviation, axis=0)
        else:
            x_offsets = (n.to(tl.int64) * stride_nxn + offs_n[None, :] * stride_nxc
                         + (reflect(oh - PAD_OUT, XH) * stride_nxh + reflect(ow - PAD_OUT, XW) * stride_nxw)[:, None])
            xhat, z = _normalized(tl.load(nx_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32), n, offs_n, n_ok,
                                  mean_ptr, rstd_ptr, nw_ptr, nb_ptr, group_stride, HAS_AFFINE)
            dz = acc
            if HAS_ACT:
                dz = tl.where(z > 0, dz, dz * negative_slope)
            dz = tl.where(mask, dz, 0.0)
            tile_a, tile_b = tl.sum(dz, axis=0), tl.sum(dz * xhat, axis=0)
        if group_tiles == 1:  # the tile is the whole group
            _finish_group(tile_a, tile_b, count, out_a_ptr, out_b_ptr, running_mean_ptr, running_var_ptr,
                          batches_ptr, g, pid_n, offs_n, n_ok, C_out, eps, momentum, STATS, UPDATE_RUNNING)
        else:
            tile = n * tl.num_programs(0) + pid_m
            tl.store(part_a_ptr + tile * C_out + offs_n, tile_a, mask=n_ok)
            tl.store(part_b_ptr + tile * C_out + offs_n, tile_b, mask=n_ok)
            if STATS:
                tl.store(part_count_ptr + tile, count)  # the same value from every channel block
            # the ticket of (group g, channel block pid_n), passed as last_to_finish's counter 0
            if last_to_finish(tickets_ptr + g * tl.num_programs(1) + pid_n, 0, 0, group_tiles):
                if STATS:
                    group_a, group_b, group_rows = _combine_tiles(part_a_ptr, part_b_ptr, part_count_ptr,
                                                                  g * group_tiles, group_tiles, C_out, offs_n, n_ok,
                                                                  BLOCK_T)
                else:
                    group_a, group_b = _sum_tiles(part_a_ptr, part_b_ptr, g * group_tiles, group_tiles, C_out,
                                                  offs_n, n_ok, BLOCK_T)
                    group_rows = count  # unused
                _finish_group(group_a, group_b, group_rows, out_a_ptr, out_b_ptr, running_mean_ptr, running_var_ptr,
                              batches_ptr, g, pid_n, offs_n, n_ok, C_out, eps, momentum, STATS, UPDATE_RUNNING)


@triton.jit
def conv_wgrad_kernel(
    a_ptr,  # [N, C_a, GH, GW] through strides: the operand on the GEMM's grid (dy, or a transposed conv's input)
    b_ptr,  # [N, C_b, H_b, W_b] through strides: the operand gathered through the taps
    out_ptr,  # [C_a, C_b, KH, KW] fp32 through strides stride_o*, out: the weight gradient
    part_ptr,  # [N * SPLITS, C_a, C_b, KH, KW] fp32 through strides stride_p*, with SUM_PARTS: partial sums
    tickets_ptr,  # [C_a blocks, J blocks] int32, zero, with SUM_PARTS: see last_to_finish
    mean_ptr, rstd_ptr, nw_ptr, nb_ptr,  # the prologue's norm of the conv's input (a or b), as in conv_kernel
    C_a, GH, GW, C_b, H_b, W_b, KW, STRIDE, PAD, J_TOTAL, CHUNK, SPLITS,
    group_stride, negative_slope,
    stride_an, stride_ac, stride_ah, stride_aw, stride_bn, stride_bc, stride_bh, stride_bw,
    stride_oa, stride_ob, stride_oh, stride_ow, stride_ps, stride_pa, stride_pb, stride_ph, stride_pw,
    REFLECT: tl.constexpr, PROLOGUE_A: tl.constexpr, PROLOGUE_B: tl.constexpr, HAS_AFFINE: tl.constexpr,
    HAS_ACT: tl.constexpr, SUM_PARTS: tl.constexpr, PRECISION: tl.constexpr, INDEX: tl.constexpr,
    BLOCK_A: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """The sum over the positions (gh, gw) of chunk `split` of sample n of
    A[n, a, gh, gw] * B[n, c, gh * STRIDE - PAD + kh, gw * STRIDE - PAD + kw], the column j being (kh, kw, c),
    stored to out[a, c, kh, kw] when it is the only chunk; with SUM_PARTS, to part[n * SPLITS + split], and the last
    chunk of the tile to finish stores the sum of all parts, in their order, to out.

    A convolution's weight gradient has A = dy and B = its input; a transposed convolution's A = its input and
    B = dy. The conv's input is normalized on load with the prologue when it had one.
    """
    pid_a, pid_j, pid_s = tl.program_id(0).to(INDEX), tl.program_id(1).to(INDEX), tl.program_id(2).to(INDEX)
    n = pid_s // SPLITS
    offs_a = pid_a * BLOCK_A + tl.arange(0, BLOCK_A)
    a_ok = offs_a < C_a
    j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    j_ok = j < J_TOTAL
    c, tap = j % C_b, j // C_b
    kh, kw = tap // KW, tap % KW
    acc = tl.zeros([BLOCK_A, BLOCK_J], tl.float32)
    start = (pid_s % SPLITS) * CHUNK
    end = tl.minimum(start + CHUNK, GH * GW)
    for r0 in range(start, end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R).to(INDEX)
        r_ok = r < end
        gh, gw = r // GW, r % GW
        a = _load_input(a_ptr, n, gh[:, None], gw[:, None], offs_a, a_ok, r_ok[:, None] & a_ok[None, :],
                        GH, GW, stride_an, stride_ac, stride_ah, stride_aw, mean_ptr, rstd_ptr, nw_ptr, nb_ptr,
                        group_stride, negative_slope, False, PROLOGUE_A, HAS_AFFINE, HAS_ACT)
        b = _load_input(b_ptr, n, gh[:, None] * STRIDE - PAD + kh[None, :], gw[:, None] * STRIDE - PAD + kw[None, :],
                        c, j_ok, r_ok[:, None] & j_ok[None, :], H_b, W_b, stride_bn, stride_bc, stride_bh, stride_bw,
                        mean_ptr, rstd_ptr, nw_ptr, nb_ptr, group_stride, negative_slope, REFLECT, PROLOGUE_B,
                        HAS_AFFINE, HAS_ACT)
        operand = b_ptr.dtype.element_ty
        acc = tl.dot(tl.trans(a.to(operand)), b.to(operand), acc, input_precision=PRECISION)
    mask = a_ok[:, None] & j_ok[None, :]
    out_offsets = offs_a[:, None] * stride_oa + (c * stride_ob + kh * stride_oh + kw * stride_ow)[None, :]
    if SUM_PARTS:
        part_offsets = offs_a[:, None] * stride_pa + (c * stride_pb + kh * stride_ph + kw * stride_pw)[None, :]
        tl.store(part_ptr + pid_s.to(tl.int64) * stride_ps + part_offsets, acc, mask=mask)
        # the ticket of weight tile (pid_a, pid_j), passed as last_to_finish's counter 0
        if last_to_finish(tickets_ptr + pid_a * tl.num_programs(1) + pid_j, 0, 0, tl.num_programs(2)):
            acc = tl.zeros([BLOCK_A, BLOCK_J], tl.float32)
            for part in range(0, tl.num_programs(2)):
                acc += tl.load(part_ptr + part * stride_ps + part_offsets, mask=mask, other=0.0)
            tl.store(out_ptr + out_offsets, acc, mask=mask)
    else:
        tl.store(out_ptr + out_offsets, acc, mask=mask)
