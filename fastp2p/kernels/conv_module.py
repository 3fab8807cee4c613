"""The fused conv + norm layers: ConvFunction and NormFunction, the autograd ops over conv.py's launchers, and the
modules that stand in for a network's conv and its norm, FusedConv and ConvNorm.

A conv followed by a norm becomes a FusedConv at the conv's index (the conv's Parameters) that returns its output and
the statistics its kernel computed of it, as the norm asks (updating the norm's running statistics too), and a
ConvNorm at the norm's index (the norm's Parameters and buffers), which the FusedConv reads at each call. Where the
next layer is a FusedConv, the ConvNorm hands it (output, Prologue) and that conv normalizes and activates its input
as it loads it; elsewhere the ConvNorm applies the norm and activation itself. Each keeps the Parameters of the
module it replaces under that module's index, so state_dict keys stay the reference's.
"""

import torch
from torch import nn

from .conv import ConvGeometry, Prologue, Statistics, conv_forward, conv_input_grad, conv_weight_grad, normalize
from .norm_act import norm_act_backward
from .pad import memory_format_of, reflection_pad_backward


class ConvFunction(torch.autograd.Function):
    """conv_forward as an autograd op (x, weight, bias and the prologue's affine parameters get gradients).

    prologue_options: (negative_slope, per_sample, use_batch_stats) of the norm applied on load, None for none. The
    input gradient of a conv with a prologue goes through the norm's backward from the saved pre-norm x and its
    statistics (mean and rstd, which the producing ConvNorm made without a graph), so it includes the statistics'
    dependence on x; the input-gradient kernel reduces it for that backward, which then only applies dx. With
    statistics the output's (mean, rstd) are returned too, non-differentiable.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, rstd, norm_weight, norm_bias, geometry, prologue_options, statistics):
        prologue = None if prologue_options is None else Prologue(mean, rstd, norm_weight, norm_bias,
                                                                  *prologue_options)
        y, stats = conv_forward(x, weight, bias, geometry, prologue, statistics)
        ctx.save_for_backward(x, weight, mean, rstd, norm_weight, norm_bias)
        ctx.geometry, ctx.prologue_options = geometry, prologue_options
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the statistics
        if stats is None:
            return y
        ctx.mark_non_differentiable(*stats)
        return (y, *stats)

    @staticmethod
    def backward(ctx, dy, *_):
        x, weight, mean, rstd, norm_weight, norm_bias = ctx.saved_tensors
        geometry, options = ctx.geometry, ctx.prologue_options
        prologue = None if options is None else Prologue(mean, rstd, norm_weight, norm_bias, *options)
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        need_affine = prologue is not None and any(ctx.needs_input_grad[5:7])
        dx = dnorm_weight = dnorm_bias = dweight = dbias = None
        if need_x or need_affine:
            # with a prologue, the kernel also reduces da for the norm's backward, which then only applies dx
            da, sums = conv_input_grad(dy, weight, geometry, x.shape[2:], memory_format_of(x), x, prologue)
            padding = (geometry.padding,) * 4 if geometry.reflect else None
            if prologue is not None:  # da is the activation's gradient (padded with a reflection pad)
                slope, per_sample, use_batch_stats = options
                dx, dnorm_weight, dnorm_bias, _ = norm_act_backward(
                    None if padding else da, da if padding else None, x, norm_weight, norm_bias, mean, rstd, None,
                    per_sample=per_sample, use_batch_stats=use_batch_stats, negative_slope=slope, dropout_p=0.0,
                    padding=padding, need_input_grad=need_x, need_affine_grad=need_affine, sums=sums)
            elif padding:
                dx = reflection_pad_backward(da, padding, x.shape, memory_format_of(x))
            else:
                dx = da
        if need_weight:
            dweight = conv_weight_grad(x, dy, weight, geometry, prologue)
        if need_bias:
            dbias = dy.sum((0, 2, 3), dtype=torch.float32).to(ctx.bias_dtype)
        return dx, dweight, dbias, None, None, dnorm_weight, dnorm_bias, None, None, None


class NormFunction(torch.autograd.Function):
    """act((y - mean) * rstd * weight + bias) from given statistics, as an autograd op whose backward is the fused
    norm's (which, with batch statistics, includes their dependence on y)."""

    @staticmethod
    def forward(ctx, y, mean, rstd, weight, bias, negative_slope, per_sample, use_batch_stats):
        ctx.save_for_backward(y, mean, rstd, weight, bias)
        ctx.options = dict(negative_slope=negative_slope, per_sample=per_sample, use_batch_stats=use_batch_stats)
        return normalize(y, mean, rstd, weight, bias, negative_slope)

    @staticmethod
    def backward(ctx, dout):
        y, mean, rstd, weight, bias = ctx.saved_tensors
        dy, dweight, dbias, _ = norm_act_backward(
            dout, None, y, weight, bias, mean, rstd, None, dropout_p=0.0, need_input_grad=ctx.needs_input_grad[0],
            need_affine_grad=ctx.needs_input_grad[3] or ctx.needs_input_grad[4], **ctx.options)
        return dy, None, None, dweight, dbias, None, None, None


class FusedConv(nn.Module):
    """A Conv2d or ConvTranspose2d (the same Parameter objects, so the same keys) computed by the Triton implicit
    GEMM, with the reflection pad before it (``reflect_pad``), the norm and activation of its input (a Prologue
    passed to forward) and, with ``norm`` (the ConvNorm after it), the statistics of its output that the norm asks
    for: forward then returns (output, (mean, rstd) or None). ``add_bias`` False leaves out a bias that the
    InstanceNorm after the conv cancels."""

    def __init__(self, conv, reflect_pad=0, norm=None, add_bias=True):
        super().__init__()
        if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
            raise NotImplementedError("FusedConv supports groups=1, dilation=1 and zero padding_mode")
        if len(set(conv.stride)) != 1 or len(set(conv.padding)) != 1 or (reflect_pad and conv.padding[0]):
            raise NotImplementedError("FusedConv supports one stride and one padding for both axes")
        transposed = isinstance(conv, nn.ConvTranspose2d)
        self.geometry = ConvGeometry(transposed, conv.stride[0], reflect_pad or conv.padding[0], reflect_pad > 0,
                                     conv.output_padding[0] if transposed else 0)
        self.weight, self.bias = conv.weight, conv.bias
        self.add_bias = add_bias and conv.bias is not None
        self._norm = (norm,) if norm is not None else ()  # a tuple: not a submodule (its keys stay at its index)
        self.train(conv.training)

    def forward(self, x, state=None):
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        with torch.autocast(device_type, enabled=False):  # the kernels cast the weights as they load them
            mean, rstd, norm_weight, norm_bias, *options = state or (None,) * 7
            statistics = self._norm[0].statistics() if self._norm else None
            out = ConvFunction.apply(x.to(dtype), self.weight, self.bias if self.add_bias else None, mean, rstd,
                                     norm_weight, norm_bias, self.geometry, tuple(options) if state else None,
                                     statistics)
        if not self._norm:
            return out
        return (out[0], out[1:]) if statistics else (out, None)

    def extra_repr(self):
        return f"{self.geometry}, stats={bool(self._norm)}, add_bias={self.add_bias}"


class ConvNorm(nn.Module):
    """The BatchNorm2d / InstanceNorm2d (the same Parameters and buffers, so the same keys) after a FusedConv, and the
    ReLU/LeakyReLU after it: ``forward(y, stats)`` takes the conv's output and the batch statistics the conv computed
    as ``statistics()`` asked (None when the running ones are used), and returns the activation, or with
    ``hands_off`` (y, Prologue) for the FusedConv after it."""

    def __init__(self, norm, activation=None, negative_slope=0.2):
        super().__init__()
        self.per_sample = isinstance(norm, nn.InstanceNorm2d)
        if self.per_sample and (norm.affine or norm.track_running_stats):
            raise NotImplementedError("InstanceNorm2d is supported with affine=False, track_running_stats=False")
        if not self.per_sample and not (isinstance(norm, nn.BatchNorm2d) and norm.affine
                                        and norm.track_running_stats and norm.momentum is not None):
            raise NotImplementedError("BatchNorm2d is supported with affine, running statistics and a momentum")
        self.num_features, self.eps, self.momentum = norm.num_features, norm.eps, norm.momentum
        self.negative_slope = {None: None, "relu": 0.0, "leaky_relu": negative_slope}[activation]
        self.weight, self.bias = norm.weight, norm.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            self.register_buffer(name, getattr(norm, name))
        self.hands_off = False
        self.train(norm.training)

    def statistics(self):
        """The Statistics the conv before this norm computes of its output (and the running statistics it updates,
        in BatchNorm's training), None when the norm uses its running statistics."""
        if not (self.training or self.per_sample):
            return None
        update = self.training and not self.per_sample
        running = (self.running_mean, self.running_var, self.num_batches_tracked, self.momentum)
        return Statistics(self.per_sample, self.eps, running if update else None)

    def forward(self, y, stats):
        use_batch_stats = stats is not None
        if not use_batch_stats:
            stats = (self.running_mean.float()[None], torch.rsqrt(self.running_var.float() + self.eps)[None])
        state = Prologue(*stats, self.weight, self.bias, self.negative_slope, self.per_sample, use_batch_stats)
        if self.hands_off:
            return y, state
        return NormFunction.apply(y, *state)

    def extra_repr(self):
        return (f"{self.num_features}, {'instance' if self.per_sample else 'batch'}, negative_slope="
                f"{self.negative_slope}, hands_off={self.hands_off}")
