"""Low-precision copies of a network's conv weights for autocast, made in one multi-tensor kernel.

Autocast casts each conv weight and bias to bf16/fp16 with a kernel of its own, and each one's gradient back to
fp32 with another: a sizeable share of an iteration's kernels at batch 1 (benchmarks/count_ops.py counts them),
each a launch for a few kilobytes. Here each conv becomes one that reads its weight and bias from the copies its
network's forward pre-hook made for the call, all of them at once, and the backward casts their gradients back to
the fp32 parameters with one torch._foreach_copy_. The copies are made
- per forward (``--foreach_cast``): one multi-tensor cast at each call;
- per optimizer step (``--step_cast``): kept between steps and rewritten by one multi-tensor copy right after each
  step of the optimizer that owns the weights (or by that step's own kernel under --adam_kernel triton), so a
  forward reads them without casting anything and a network called several times in a step (CycleGAN's
  generators) reads the same copy each time.

The values are autocast's: the same rounding of the same fp32 weights, and a single use's gradient is the same
bits. A network called several times in one step has its gradients summed in fp32 across calls, where
autocast's per-step weight cache sums them in the low precision first. Checkpoints hold the fp32 weights.
"""

import functools

import torch
from torch import nn

from fastp2p.engine.layers import rebuilt_as
from fastp2p.engine.path import AUTOCAST_VALUES, Check, FastPath, Stage


def keep_layouts(ctx, tensors):
    """Remember the fp32 tensors' layouts for gradients_in_fp32; a tensor the forward did not reach gets None."""
    ctx.layouts = [(t.shape, t.stride(), t.dtype) for t in tensors]
    ctx.set_materialize_grads(False)


def gradients_in_fp32(ctx, grads):
    """The low-precision copies' gradients cast back, one multi-tensor kernel, in the parameters' own layouts
    (which AccumulateGrad would otherwise copy them into)."""
    present = [i for i, grad in enumerate(grads) if grad is not None]
    full = [torch.empty_strided(*ctx.layouts[i][:2], dtype=ctx.layouts[i][2], device=grads[i].device)
            for i in present]
    if full:
        torch._foreach_copy_(full, [grads[i] for i in present])
    result = [None] * len(grads)
    for i, grad in zip(present, full):
        result[i] = grad
    return result


class CastParameters(torch.autograd.Function):
    """(dtype, *fp32 tensors) -> their copies in dtype, one multi-tensor kernel each way."""

    @staticmethod
    def forward(ctx, dtype, *tensors):
        copies = [torch.empty_like(t, dtype=dtype) for t in tensors]
        torch._foreach_copy_(copies, list(tensors))
        keep_layouts(ctx, tensors)
        return tuple(copies)

    @staticmethod
    def backward(ctx, *grads):
        return (None, *gradients_in_fp32(ctx, grads))


class UseStepCopies(torch.autograd.Function):
    """(copies, *fp32 tensors) -> the copies, as the last optimizer step wrote them; no kernel forward, one
    multi-tensor cast of the gradients backward."""

    @staticmethod
    def forward(ctx, copies, *tensors):
        keep_layouts(ctx, tensors)
        # aliases, so each call's outputs get their own autograd history; an optimizer step that rewrites the copies
        # before a backward that still needs them is then the version-counter error it should be. as_strided keeps
        # every stride (view_as would renormalize a size-1 dimension's, which changes how a conv sees the layout)
        return tuple(copy.as_strided(copy.size(), copy.stride(), copy.storage_offset()) for copy in copies)

    @staticmethod
    def backward(ctx, *grads):
        return (None, *gradients_in_fp32(ctx, grads))


def conv_parameter_slots(net):
    """(module, name) of every conv and transposed-conv weight and bias of ``net``."""
    return [(module, name) for module in net.modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))
            for name in ("weight", "bias") if getattr(module, name) is not None]


class CopiesInForward:
    """The low-precision copies of one network's conv parameters while its forward runs under autocast."""

    def __init__(self):
        self.current = None  # id(parameter) -> its copy, during a forward

    def of(self, parameter):
        if self.current is None or parameter is None:
            return parameter
        return self.current.get(id(parameter), parameter)


class ReadsWeightCopies:
    """What a converted conv adds to its class: ``weight`` and ``bias`` read their copy while its network's forward
    runs under autocast (``copies_in_forward``), else the Parameter; the parameters, their keys and everything else of
    the conv are its own."""

    copies_in_forward = None

    def _copy_or_parameter(self, name):
        if name not in self._parameters:
            raise AttributeError(name)  # not registered yet: nn.Module's own check while __init__ registers it
        parameter = self._parameters[name]
        return parameter if self.copies_in_forward is None else self.copies_in_forward.of(parameter)

    weight = property(lambda self: self._copy_or_parameter("weight"))
    bias = property(lambda self: self._copy_or_parameter("bias"))


@functools.cache
def reading_copies(cls):
    """``cls`` (a conv class) with ReadsWeightCopies in front."""
    return type(f"{cls.__name__}ReadingCopies", (ReadsWeightCopies, cls), {"__module__": __name__})


def read_copies_while_autocast(net, device_type, make_copies):
    """Make every conv of ``net`` read make_copies(dtype, parameters) (a copy per conv parameter, made by a forward
    pre-hook on ``net``) while autocast is on for ``device_type``, and its Parameters otherwise (an fp32 forward, after
    a forward, also one that raised). Returns the fp32 parameters, in the order the copies come."""
    holder = CopiesInForward()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)) and not isinstance(child, ReadsWeightCopies):
                converted = rebuilt_as(child, reading_copies(type(child)))
                converted.copies_in_forward = holder
                setattr(parent, name, converted)
    originals = [getattr(module, name) for module, name in conv_parameter_slots(net)]

    def copies_in(_net, _args):
        if torch.is_autocast_enabled(device_type):
            copies = make_copies(torch.get_autocast_dtype(device_type), originals)
            holder.current = {id(parameter): copy for parameter, copy in zip(originals, copies)}

    def parameters_back(_net, _args, _output):
        holder.current = None

    net.register_forward_pre_hook(copies_in)
    net.register_forward_hook(parameters_back, always_call=True)
    return originals


def cast_conv_parameters_per_forward(net, device_type):
    """``--foreach_cast`` on ``net`` (see the module doc); returns how many parameters it casts."""
    return len(read_copies_while_autocast(net, device_type, lambda dtype, originals: CastParameters.apply(
        dtype, *originals)))


class StepCopies:
    """``--step_cast`` on one network: its conv parameters' copies in ``dtype``, rewritten by ``refresh``."""

    def __init__(self, net, device_type, dtype):
        self.dtype = dtype
        self.originals = read_copies_while_autocast(net, device_type, self.for_forward)
        self.index = {id(p): i for i, p in enumerate(self.originals)}
        self.copies = [torch.empty_like(p, dtype=dtype) for p in self.originals]  # in each parameter's layout
        self.refresh()

    def for_forward(self, dtype, originals):
        if dtype != self.dtype:
            raise RuntimeError(f"--step_cast keeps {self.dtype} copies, but autocast asks for {dtype}")
        return UseStepCopies.apply(self.copies, *originals)

    @torch.no_grad()
    def refresh(self):
        """Write the copies from the fp32 parameters (one multi-tensor kernel)."""
        if self.copies:
            torch._foreach_copy_(self.copies, self.originals)

    @torch.no_grad()
    def refresh_parameter(self, parameter):
        """Write one parameter's copy (after its own step, under --overlap_optimizer); others are left alone."""
        index = self.index.get(id(parameter))
        if index is not None:
            self.copies[index].copy_(parameter)

    def refresh_after_steps_of(self, optimizers):
        """Keep the copies current after each step of an optimizer that updates some of these parameters (inside a
        captured CUDA graph too, and not after a step fp16's scaler skips): an optimizer that writes copies in its
        own step (``write_copies``: the Triton Adam, --adam_kernel triton) is handed those of its parameters; on any
        other, ``refresh`` is hooked to run right after its step."""
        for optimizer in optimizers:
            stepped = [self.index[id(p)] for group in optimizer.param_groups for p in group["params"]
                       if id(p) in self.index]
            if stepped and hasattr(optimizer, "write_copies"):
                optimizer.write_copies([self.originals[i] for i in stepped], [self.copies[i] for i in stepped])
            elif stepped:
                optimizer.register_step_post_hook(lambda _optimizer, _args, _kwargs: self.refresh())


def can_cast(s):
    """The copies are autocast's: they need --amp, and --compile traces the networks itself."""
    return s.value("amp") is not None and s.value("compile") is None


CAST_NEEDS = "it needs --amp bf16 or fp16 (it casts for autocast) and no --compile (which traces the networks itself)"


def cast_per_forward(prep):
    for net in prep.networks:
        cast_conv_parameters_per_forward(net, prep.device.type)


def make_step_copies(prep):
    prep.step_copies = [StepCopies(net, prep.device.type, prep.config.amp) for net in prep.networks]


def refresh_step_copies_after_steps(prep):
    for copies in prep.step_copies:
        copies.refresh_after_steps_of(prep.model.optimizers)


FOREACH_CAST = FastPath(
    "foreach_cast", "with --amp, cast each network's conv weights in one multi-tensor kernel per forward (and their "
                    "gradients back in one) instead of a kernel per weight",
    auto=lambda s: s.cuda,
    blockers=lambda s, on: [reason for reason, blocked in (
        (CAST_NEEDS, not can_cast(s)),
        ("--step_cast makes the weights' low-precision copies already (per optimizer step): turn one off",
         s.value("step_cast")),
    ) if blocked] if on else [],
    hooks={Stage.WEIGHT_COPIES: cast_per_forward}, bench_row="foreach_cast",
    check=Check(AUTOCAST_VALUES, needs=("--amp", "bf16")))
STEP_CAST = FastPath(
    "step_cast", "with --amp, keep low-precision copies of each network's conv weights that one multi-tensor copy "
                 "rewrites after each optimizer step, so no forward casts weights (checkpoints keep fp32); auto "
                 "prefers it to --foreach_cast",
    auto=lambda s: s.cuda, blockers=lambda s, on: [CAST_NEEDS] if on and not can_cast(s) else [],
    hooks={Stage.WEIGHT_COPIES: make_step_copies, Stage.OPTIMIZERS: refresh_step_copies_after_steps},
    bench_row="step_cast", replaces=("foreach_cast",), check=Check(AUTOCAST_VALUES, needs=("--amp", "bf16")),
    needs_engine_optimizers=True)
