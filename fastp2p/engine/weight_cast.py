"""--foreach_cast: a network's conv weights cast for autocast in one multi-tensor kernel per forward.

Autocast casts each conv weight and bias to bf16/fp16 with a kernel of its own, and each one's gradient back to
fp32 with another: a sizeable share of an iteration's kernels at batch 1 (benchmarks/count_ops.py counts them),
each a launch for a few kilobytes. Here a forward pre-hook casts all of a network's
conv parameters with one torch._foreach_copy_, runs the forward on those copies (swapped into the modules for
the call, as torch.func.functional_call does), and the backward casts their gradients back with one more.

The values are autocast's: the same rounding of the same fp32 weights, and a single use's gradient is the same
bits. A network called several times in one step gets one cast per call, and its gradients are summed in fp32
across calls where autocast's per-step weight cache sums them in the low precision first.
"""

import torch
from torch import nn


class CastParameters(torch.autograd.Function):
    """(dtype, *fp32 tensors) -> their copies in dtype, one multi-tensor kernel each way."""

    @staticmethod
    def forward(ctx, dtype, *tensors):
        copies = [torch.empty_like(t, dtype=dtype) for t in tensors]
        torch._foreach_copy_(copies, list(tensors))
        ctx.layouts = [(t.shape, t.stride(), t.dtype) for t in tensors]
        ctx.set_materialize_grads(False)  # a parameter the forward did not reach gets None, not a zero tensor
        return tuple(copies)

    @staticmethod
    def backward(ctx, *grads):
        present = [i for i, grad in enumerate(grads) if grad is not None]
        # in the parameters' own layouts, which AccumulateGrad would otherwise copy them into
        full = [torch.empty_strided(*ctx.layouts[i][:2], dtype=ctx.layouts[i][2], device=grads[i].device)
                for i in present]
        if full:
            torch._foreach_copy_(full, [grads[i] for i in present])
        result = [None] * len(grads)
        for i, grad in zip(present, full):
            result[i] = grad
        return (None, *result)


def cast_conv_parameters_per_forward(net, device_type):
    """Install the one-kernel cast on ``net`` (see the module doc); it acts only while autocast is on for
    ``device_type``, so an fp32 forward (evaluation outside autocast) uses the fp32 weights as before."""
    slots = [(module, name) for module in net.modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
             for name in ("weight", "bias") if getattr(module, name) is not None]
    originals = [getattr(module, name) for module, name in slots]

    def swap_in(_net, _args):
        if not torch.is_autocast_enabled(device_type):
            return
        copies = CastParameters.apply(torch.get_autocast_dtype(device_type), *originals)
        for (module, name), copy in zip(slots, copies):
            module._parameters[name] = copy

    def swap_back(_net, _args, _output):
        for (module, name), parameter in zip(slots, originals):
            module._parameters[name] = parameter

    net.register_forward_pre_hook(swap_in)
    net.register_forward_hook(swap_back, always_call=True)  # also when the forward raises
    return len(slots)
