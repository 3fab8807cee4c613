"""Launch plan and host side of the fused norm + activation, whose kernels are in norm_act_kernels.py (forward) and
norm_act_backward_kernels.py: the tile, the one-launch or split choice and the chunking, from the tensor's shape and
layout and the GPU's size; the buffers the kernels read and write; norm_act_forward and norm_act_backward, which
launch them."""

import torch

from .launch import cdiv, grid, next_power_of_2, target_programs, tickets, tiling
from .norm_act_backward_kernels import backward_apply_kernel, backward_group_kernel, backward_partial_kernel
from .norm_act_kernels import forward_apply_kernel, forward_group_kernel, stats_partial_kernel
from .pad import check_padding, memory_format_of

# launch.tiling's bounds for a [BLOCK_HW, BLOCK_C] tile: when channels are inner, at least 64 of them and 16 rows
NORM_TILE_BOUNDS = dict(min_channels=64, min_length=16)


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


def flat_strides(t):
    return t.stride(0), t.stride(1), _hw_stride(t)


def _groups(x, per_sample):
    """(GROUPS, ROWS): statistics per sample over H*W (InstanceNorm), or over the whole batch (BatchNorm)."""
    N, C, H, W = x.shape
    return (N, H * W) if per_sample else (1, N * H * W)


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


def reduction_plan(x, per_sample):
    """How the statistics (forward) and the sums (backward) of a training step on x are reduced, for reports:
    programs per reduction launch, the chunks (splits) each group's rows are cut into, and the [BLOCK_R, BLOCK_C]
    tiles the last program to finish loads one after the other to combine them (0 when one launch does it all)."""
    x = dense(x)
    groups, rows = _groups(x, per_sample)
    block_hw, block_c, _ = tiling(x, rows, **NORM_TILE_BOUNDS)
    splits, _ = _split_plan(x, groups, rows, block_c, block_hw)
    combine_loads = 0 if splits == 1 else cdiv(splits, _combine_rows(splits, block_c))
    return dict(programs=cdiv(x.shape[1], block_c) * groups * splits, splits=splits, combine_loads=combine_loads,
                tile=[block_hw, block_c])


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


def empty_skip_concat(x, skip_width):
    """An empty U-Net skip concatenation [N, C + skip_width, H, W] for x, in x's memory format and dtype: the
    first C channels for relu(the output of x's layer), the rest for the inner level's."""
    return torch.empty((x.shape[0], x.shape[1] + skip_width, *x.shape[2:]), device=x.device, dtype=x.dtype,
                       memory_format=memory_format_of(x))


def dense(x):
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
    x = dense(x)
    N, C, H, W = x.shape
    HW = H * W
    groups, rows = _groups(x, per_sample)
    block_hw, block_c, num_warps = tiling(x, rows, **NORM_TILE_BOUNDS)
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
    strides = (*flat_strides(x), *flat_strides(walked), *flat_strides(x if relu_out is None else relu_out))
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
            forward_group_kernel[grid(c_blocks, groups)](
                *tensors, mean, rstd, *running, *pointers, C, HW, rows, out_rows, *geometry, *strides, eps, momentum,
                *scalars, UPDATE_RUNNING=update_running, **flags)
            return y, y_padded, mean, rstd
        part_mean = torch.empty((groups, splits, C), device=x.device, dtype=torch.float32)
        part_m2 = torch.empty_like(part_mean)
        stats_partial_kernel[grid(c_blocks, groups, splits)](
            x, part_mean, part_m2, tickets(x.device, groups * c_blocks), mean, rstd, *running,
            C, HW, rows, chunk, splits, *flat_strides(x), eps, momentum, UPDATE_RUNNING=update_running,
            BLOCK_HW=block_hw, BLOCK_C=block_c, BLOCK_R=_combine_rows(splits, block_c), num_warps=num_warps)
    forward_apply_kernel[grid(cdiv(out_rows, block_hw), mean.shape[0], c_blocks)](
        *tensors, mean, rstd, *pointers, C, HW, out_rows, *geometry, *strides, *scalars, **flags)
    return y, y_padded, mean, rstd


def norm_act_backward(dy, dy_padded, x, weight, bias, mean, rstd, rng_state, *, per_sample, use_batch_stats,
                      negative_slope, dropout_p, padding=None, dy_relu=None, need_input_grad=True,
                      need_affine_grad=True, need_residual_grad=False, sums=None):
    """Gradients (dx, dweight, dbias, dresidual) of norm_act_forward from those of its outputs, dy of y,
    dy_padded of y_padded and dy_relu of relu_out (None for an output without one); rng_state must hold the key
    the forward used, and padding its padding.

    dx is None unless need_input_grad; dweight/dbias are None without affine or need_affine_grad; dresidual, the
    output's whole gradient, is None unless need_residual_grad. sums: the group sums (sum_dz, sum_dzx) [GROUPS, C]
    fp32 of the gradient when its producer computed them (the fused conv's input gradient): only the apply runs.
    """
    x = dense(x)
    C = x.shape[1]
    HW = x.shape[2] * x.shape[3]
    groups, rows = _groups(x, per_sample)
    block_hw, block_c, num_warps = tiling(x, rows, **NORM_TILE_BOUNDS)
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
    strides = tuple(stride for t in (x, dy, dy_padded, dy_relu) for stride in flat_strides(x if t is None else t))
    scalars = (0.0 if negative_slope is None else negative_slope, dropout_p)
    flags = dict(HAS_AFFINE=has_affine, HAS_ACT=negative_slope is not None, HAS_DROPOUT=dropout_p > 0,
                 HAS_DY=dy is not None, PAD=dy_padded is not None, RELU_OUT=dy_relu is not None,
                 BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps)
    stats_groups = mean.shape[0]  # 1 for BatchNorm, in training and eval alike
    if not ((input_pass and use_batch_stats) or need_affine_grad):  # BatchNorm eval, input gradients only
        backward_apply_kernel[grid(cdiv(rows, block_hw), stats_groups, c_blocks)](
            x, *grads, *outs, *pointers, dummy, dummy, C, HW, rows, *geometry, *strides, *scalars,
            BATCH_STATS=False, RESIDUAL=need_residual_grad, **flags)
        return (dx if need_input_grad else None), None, None, dresidual
    if sums is not None:
        (sum_dz, sum_dzx), splits = sums, None  # reduced already
    else:
        sum_dz = torch.empty((groups, C), device=x.device, dtype=torch.float32)
        sum_dzx = torch.empty_like(sum_dz)
        splits, chunk = _split_plan(x, groups, rows, block_c, block_hw)
    if splits == 1:
        backward_group_kernel[grid(c_blocks, groups)](
            x, *grads, *outs, *pointers, sum_dz, sum_dzx, C, HW, rows, *geometry, *strides, *scalars,
            BATCH_STATS=use_batch_stats, RESIDUAL=need_residual_grad, INPUT_GRAD=input_pass, **flags)
    else:
        if splits is not None:
            part_dz = torch.empty((groups, splits, C), device=x.device, dtype=torch.float32)
            part_dzx = torch.empty_like(part_dz)
            backward_partial_kernel[grid(c_blocks, groups, splits)](
                x, *grads, *pointers, part_dz, part_dzx, tickets(x.device, groups * c_blocks), sum_dz, sum_dzx,
                C, HW, rows, chunk, splits, *geometry, *strides, *scalars, BLOCK_R=_combine_rows(splits, block_c),
                **flags)
        if input_pass:
            backward_apply_kernel[grid(cdiv(rows, block_hw), groups, c_blocks)](
                x, *grads, *outs, *pointers, sum_dz, sum_dzx, C, HW, rows, *geometry, *strides, *scalars,
                BATCH_STATS=use_batch_stats, RESIDUAL=need_residual_grad, **flags)
    dweight = dbias = None
    if need_affine_grad:  # BatchNorm has one group (no extra launch); an affine InstanceNorm sums its N groups
        dweight = (sum_dzx[0] if groups == 1 else sum_dzx.sum(0)).to(weight.dtype)
        dbias = (sum_dz[0] if groups == 1 else sum_dz.sum(0)).to(bias.dtype)
    return (dx if need_input_grad else None), dweight, dbias, dresidual
