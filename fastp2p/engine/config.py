"""Which fast paths a run uses: its switches resolved against the device (EngineConfig, resolve_engine).

'auto' turns a path on where its rule says it pays (on a GPU, mostly) and nothing blocks it, and leaves the plain
reference path on the CPU. An explicit 'on' that cannot work (CUDA graphs without a GPU, fp16 on the CPU, fused
kernels without Triton) is an OptionError that says why, never a silent fallback. The paths and their rules are
declared in their modules and listed in engine.registry; EngineConfig has one field per path.
"""

import dataclasses
import importlib.util
import os

import torch

from fastp2p import distributed
from fastp2p.engine.precision import PRECISION_NAMES
from fastp2p.engine.registry import BY_NAME, PATHS
from fastp2p.errors import OptionError


class EngineChoices:
    """What EngineConfig (one field per path, plus ``ddp``) says of itself."""

    def describe(self):
        """The engine line a run prints: the precision, then every path that is on."""
        on = [label for path in PATHS if (label := path.describe(getattr(self, path.name)))]
        on += ["ddp"] if self.ddp else []
        plain = self.amp is None and not on
        return f"engine: {PRECISION_NAMES[self.amp]}" + (", reference path" if plain else
                                                           "".join(", " + name for name in on))

    def on(self):
        """The names of the paths that are on."""
        return [path.name for path in PATHS if getattr(self, path.name) not in (path.off, None)]

    def as_flags(self):
        """path name -> the flag value that resolves to this config's value (every path, the off ones too)."""
        flags = {}
        for path in PATHS:
            value = getattr(self, path.name)
            given = [flag for flag, meant in path.values.items() if meant == value and flag != "auto"]
            flags[path.name] = given[0] if given else (path.off_flag if value in (path.off, None) else value)
        return flags


EngineConfig = dataclasses.make_dataclass(
    "EngineConfig", [(path.name, object, dataclasses.field(default=path.off)) for path in PATHS]
    + [("ddp", bool, dataclasses.field(default=False))],
    bases=(EngineChoices,), frozen=True, kw_only=True)
EngineConfig.__module__ = __name__  # pickled by name (spawned loader workers get the options)
EngineConfig.__doc__ = "The resolved fast paths of a run (each path's value, its 'off' by default), and DDP."


def situation(opt, device, ddp):
    """The Situation the paths resolve in, resolving each on first use."""
    from fastp2p.engine.path import Situation

    from fastp2p.models import find_model  # the models import the engine's runtime

    cuda = device.type == "cuda"
    resolved, resolving = {}, set()

    def value(name):
        if name not in resolved:
            if name in resolving:
                raise RuntimeError(f"the fast paths' rules depend on each other in a circle through {name}")
            resolving.add(name)
            resolved[name] = resolve_path(BY_NAME[name], getattr(opt, name), here)
        return resolved[name]

    here = Situation(cuda=cuda, bf16=lambda: cuda and torch.cuda.is_bf16_supported(),
                     triton=importlib.util.find_spec("triton") is not None,
                     interpreter=os.environ.get("TRITON_INTERPRET") == "1", ddp=ddp,
                     nodes=distributed.node_count(), model=opt.model, norm=opt.norm, training=opt.isTrain,
                     accum_steps=getattr(opt, "accum_steps", 1),
                     own_optimizers=opt.isTrain and find_model(opt.model).builds_own_optimizers(),
                     asked=lambda name: getattr(opt, name), value=value)
    return here


OWN_OPTIMIZERS = "{model} builds and steps its own optimizers (the reference's way)"


def blockers(path, here, value):
    """Why ``path`` cannot run at ``value`` here: its own reasons, and the model's where the path needs the engine
    to own the optimizers."""
    reasons = path.blockers(here, value)
    if path.needs_engine_optimizers and here.own_optimizers and value not in (path.off, None):
        reasons.append(OWN_OPTIMIZERS.format(model=f"--model {here.model}") + ", which this path replaces or "
                       "captures; define trained_parameters() instead (docs/extending.md)")
    return reasons


def resolve_path(path, asked, here):
    """The value of ``path`` for the flag value ``asked``: 'auto' by its rule unless something blocks it, else the
    value asked for, which a blocker makes an OptionError naming every reason."""
    if asked == "auto":
        value = path.auto(here)
        return value if value in (path.off, None) or not blockers(path, here, value) else path.off
    value = path.value_of(asked)
    reasons = blockers(path, here, value)
    if reasons:
        raise OptionError(f"--{path.name} {asked} is not possible here: {'; '.join(reasons)}")
    return value


def model_limits(opt):
    """The line a training run prints at start when its model builds and steps its own optimizers: the engine's paths
    that then do not apply (those for its networks do); None otherwise."""
    from fastp2p.models import find_model

    if not (opt.isTrain and find_model(opt.model).builds_own_optimizers()):
        return None
    names = [path.name for path in PATHS if path.needs_engine_optimizers]
    return (f"engine: {OWN_OPTIMIZERS.format(model=find_model(opt.model).__name__)}: {', '.join(names)} and fp16's "
            f"loss scaler do not apply to it; define trained_parameters() and call self.backward(loss) and "
            f"self.step(optimizer) to get them (docs/extending.md)")


def resolve_engine(opt, device):
    """The EngineConfig for ``opt`` on ``device``."""
    ddp = distributed.world_size() > 1
    if ddp and device.type != "cuda" and opt.norm == "syncbatch":
        # torch's SyncBatchNorm syncs GPU tensors only; on the CPU it fails in the first forward
        raise OptionError("--norm syncbatch needs GPUs under DDP; use --norm batch (per-process statistics) "
                          "on the CPU")
    if opt.reference:
        return EngineConfig(ddp=ddp)
    here = situation(opt, device, ddp)
    return EngineConfig(ddp=ddp, **{path.name: here.value(path.name) for path in PATHS})
