"""Low-precision copies of a network's conv weights for autocast, made in one multi-tensor kernel.

Autocast casts each conv weight and bias to bf16/fp16 with a kernel of its own, and each one's gradient back to
fp32 with another: a sizeable share of an iteration's kernels at batch 1 (benchmarks/count_ops.py counts them),
each a launch for a few kilobytes. Here a forward pre-hook swaps low-precision copies of all of a network's conv
parameters into the modules for the call (as torch.func.functional_call does), and the backward casts their
gradients back to the fp32 parameters with one torch._foreach_copy_. The copies are made
- per forward (``--foreach_cast``): one multi-tensor cast at each call;
- per optimizer step (``--step_cast``): kept between steps and rewritten by one multi-tensor copy right after each
  step of the optimizer that owns the weights (or by that step's own kernel under --adam_kernel triton), so a
  forward reads them without casting anything and a network called several times in a step (CycleGAN's
  generators) reads the same copy each time.

The values are autocast's: the same rounding of the same fp32 weights, and a single use's gradient is the same
bits. A network called several times in one step has its gradients summed in fp32 across calls, where
autocast's per-step weight cache sums them in the low precision first. Checkpoints hold the fp32 weights.
"""

import torch
from torch import nn

from fastp2p.engine.path import LOW_PRECISION, Check, FastPath, Stage


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


def swap_in_while_autocast(net, device_type, slots, make_copies):
    """Hooks on ``net`` that, while autocast is on for ``device_type``, put make_copies(dtype) (a copy per slot)
    into the modules for the forward and the fp32 parameters back after it, also when it raises. An fp32 forward
    (evaluation outside autocast) uses the fp32 weights as before."""
    originals = [getattr(module, name) for module, name in slots]

    def swap_in(_net, _args):
        if not torch.is_autocast_enabled(device_type):
            return
        copies = make_copies(torch.get_autocast_dtype(device_type), originals)
        for (module, name), copy in zip(slots, copies):
            module._parameters[name] = copy

    def swap_back(_net, _args, _output):
        for (module, name), parameter in zip(slots, originals):
            module._parameters[name] = parameter

    net.register_forward_pre_hook(swap_in)
    net.register_forward_hook(swap_back, always_call=True)


def cast_conv_parameters_per_forward(net, device_type):
    """``--foreach_cast`` on ``net`` (see the module doc); returns how many parameters it casts."""
    slots = conv_parameter_slots(net)
    swap_in_while_autocast(net, device_type, slots, lambda dtype, originals: CastParameters.apply(dtype, *originals))
    return len(slots)


class StepCopies:
    """``--step_cast`` on one network: its conv parameters' copies in ``dtype``, rewritten by ``refresh``."""

    def __init__(self, net, device_type, dtype):
        slots = conv_parameter_slots(net)
        self.dtype = dtype
        self.originals = [getattr(module, name) for module, name in slots]
        self.index = {id(p): i for i, p in enumerate(self.originals)}
        self.copies = [torch.empty_like(p, dtype=dtype) for p in self.originals]  # in each parameter's layout
        self.refresh()
        swap_in_while_autocast(net, device_type, slots, self.for_forward)

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
    check=Check(LOW_PRECISION, needs=("--amp", "bf16")))
STEP_CAST = FastPath(
    "step_cast", "with --amp, keep low-precision copies of each network's conv weights that one multi-tensor copy "
                 "rewrites after each optimizer step, so no forward casts weights (checkpoints keep fp32); auto "
                 "prefers it to --foreach_cast",
    auto=lambda s: s.cuda, blockers=lambda s, on: [CAST_NEEDS] if on and not can_cast(s) else [],
    hooks={Stage.WEIGHT_COPIES: make_step_copies, Stage.OPTIMIZERS: refresh_step_copies_after_steps},
    bench_row="step_cast", replaces=("foreach_cast",), check=Check(LOW_PRECISION, needs=("--amp", "bf16")))
