"""The fused norm + activation layer: NormActFunction, the autograd op over norm_act_forward/norm_act_backward
(norm_act.py), and FusedNormAct, the nn.Module that stands in for a network's norm and the layers it absorbs."""

import torch
from torch import nn

from .norm_act import empty_skip_concat, norm_act_backward, norm_act_forward

ACTIVATIONS = ("identity", "relu", "leaky_relu")


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
            skip = empty_skip_concat(x, skip_width)
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

    ``forward(x)`` returns the output, or a pair (output, hand-off) for the layer after it:
    - with ``keep_unpadded``, (output, output padded): a ResNet layer whose output feeds both a ResnetBlock's
      skip and its padded conv;
    - with ``skip_width``, (output, the U-Net skip concatenation it opened; see NormActFunction), which its inner
      level fills; a layer with ``closes_skip`` takes that tensor as ``forward(x, skip=...)`` and returns it
      filled.
    ``forward(x, residual=...)`` adds a ResnetBlock's skip to the output.

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
        return NormActFunction.apply(
            x, residual, skip, self.weight, self.bias,
            self.running_mean if not use_batch_stats or update_running else None,
            self.running_var if not use_batch_stats or update_running else None,
            self.num_batches_tracked if update_running else None, self.dropout_seed,
            self.norm == "instance", use_batch_stats, self.momentum, self.eps, slope,
            self.dropout if self.training else 0.0, self.padding, self.keep_unpadded, self.skip_width)

    def extra_repr(self):
        return (f"{self.num_features}, norm={self.norm}, activation={self.activation}, "
                f"negative_slope={self.negative_slope}, dropout={self.dropout}, eps={self.eps}, "
                f"momentum={self.momentum}" + ("" if self.padding is None else f", padding={self.padding}")
                + (", keep_unpadded=True" if self.keep_unpadded else "")
                + (f", skip_width={self.skip_width}" if self.skip_width else "")
                + (", closes_skip=True" if self.closes_skip else ""))
