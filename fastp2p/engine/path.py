"""What a fast path declares about itself, once: its flag, how it resolves, what it does and how it is checked.

Each path of the engine is one ``FastPath`` object, kept in the module that implements it; ``engine.registry``
lists them. The option parser, EngineConfig, the engine line a run prints, the resolution against the device, the
order in which paths are applied to a model, the benchmark rows and the self-check's tolerances are all read from
these objects, so adding a path is its module and one entry in the registry.
"""

import dataclasses
import enum
from typing import Any, Callable

SWITCH = ("auto", "on", "off")


class Stage(enum.IntEnum):
    """Where in the engine's fixed order a path acts on a model; each stage keeps what earlier ones set up."""

    LAYERS = 1  # replace layers by fused ones (sharing their parameters, so the same keys)
    MEMORY_FORMAT = 2  # convert parameters in place
    WEIGHT_COPIES = 3  # low-precision copies of the conv weights, in the layout the conversion left
    COMPILE = 4
    OPTIMIZERS = 5  # after the optimizers are built over the same parameters
    STEP = 6  # wrap the training step
    GRAPH = 7  # last: capture what is left (after DDP)


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """How far the self-check and the CPU parity tests let a path's training part from the plain path's (in the
    precision the path needs): the losses (relative, absolute), each network's gradient (relative L2 error of all its
    parameters' gradients together) and every weight after the optimizer steps (absolute, plus weight_rtol of
    its value), set by the precision the path computes in and measured by the CPU tests."""

    loss_rtol: float
    loss_atol: float
    weight_atol: float
    grad_rel_l2: float
    precision: str
    weight_share: float = 0.01
    """the share of a weight's elements that may part by more than weight_atol: where a gradient element is at
    rounding level, Adam turns the sign of its rounding noise into a step of up to lr either way"""
    weight_rtol: float = 0.0
    """a part of the weight bound relative to the value: BatchNorm's running statistics are averages of the
    batches' values, not sums of Adam's bounded steps"""

    def limits(self):
        return self.loss_rtol, self.loss_atol, self.weight_atol


# fp32, the same math in another order (another conv algorithm, one batch for two): a weight may move by a quarter of
# one Adam step (lr 2e-4) where its gradient is at rounding level; InstanceNorms over small planes amplify the
# reordering in the gradients to a few 1e-3
REORDERED_FP32 = Tolerance(1e-4, 1e-5, 5e-5, 1e-2, "fp32")
FP32_KERNELS = Tolerance(1e-3, 1e-4, 1e-4, 1e-2, "fp32 (Triton kernels)")  # other kernels summing in other orders
# autocast's own values, cast, summed or ordered elsewhere (a network called twice sums its gradients in fp32, a
# channels-last conv sums in another order before its bf16 rounding): against the plain autocast path of the same
# precision. Each iteration's bf16 rounding of the parted weights parts the next losses further: about 1 % after
# four iterations in the CPU tests, and more weight elements' gradients are at bf16's rounding level
AUTOCAST_VALUES = Tolerance(3e-2, 1e-3, 1e-3, 5e-2, "autocast's bf16/fp16 values", weight_share=0.05,
                            weight_rtol=3e-2)
# bf16/fp16 against fp32: one iteration's gradients part by up to 40 % in the CPU tests (CycleGAN's generators)
LOW_PRECISION = Tolerance(5e-2, 5e-2, 5e-3, 6e-1, "bf16/fp16 against fp32")


@dataclasses.dataclass(frozen=True)
class Check:
    """What the self-check compares for a path, at which tolerance, and the engine flags the path needs besides its
    own (a weight cast needs --amp): the check runs the path with them against the plain path with them alone."""

    tolerance: Tolerance
    needs: tuple = ()
    compares: str = "one training iteration (D and G steps, both optimizers) against the reference path"
    cpu: bool = True  # whether the CPU tests and self-check can run it (the others need a GPU)


@dataclasses.dataclass(frozen=True)
class Situation:
    """What the resolution of a path reads: the device, the installed extras, the run, and the other paths.

    ``asked(name)`` is a path's flag as given, ``value(name)`` its resolved value (resolved on first use, so a
    path may depend on any other that does not depend on it)."""

    cuda: bool
    bf16: Callable[[], bool]  # asked only when needed: a CPU build of torch cannot answer it
    triton: bool
    interpreter: bool
    ddp: bool
    nodes: int  # the machines the job spans (torchrun's WORLD_SIZE / LOCAL_WORLD_SIZE)
    model: str
    norm: str
    training: bool  # fastp2p.train (fastp2p.test runs no backward)
    accum_steps: int  # --accum_steps: optimizer steps over several micro-batches
    own_optimizers: bool  # a training model that builds and steps its own optimizers (BaseModel.builds_own_optimizers)
    asked: Callable[[str], Any]
    value: Callable[[str], Any]


@dataclasses.dataclass(frozen=True)
class FastPath:
    """One fast path. ``auto(situation)`` is the value 'auto' resolves to where nothing blocks the path;
    ``blockers(situation, value)`` the reasons a value cannot run here: asked for explicitly, they are an error that
    names them, and 'auto' then falls back to ``off``. ``hooks`` act on the model at their stages of the engine's
    order (engine.prepare_model), ``runtime`` before the model is built (engine.runtime_for)."""

    name: str
    help: str
    auto: Callable[[Situation], Any]
    blockers: Callable[[Situation, Any], list] = lambda situation, value: []
    choices: tuple | None = SWITCH
    default: Any = "auto"
    values: dict = dataclasses.field(default_factory=lambda: {"on": True, "off": False})
    off: Any = False
    off_flag: Any = "off"  # the flag value that resolves to ``off`` (what fastp2p.test fixes a training path to)
    flag: dict = dataclasses.field(default_factory=dict)  # other add_argument keywords (--compile's optional mode)
    inference_help: str | None = None  # fastp2p.test takes the flag too, with this help
    hooks: dict = dataclasses.field(default_factory=dict)  # Stage -> hook(preparation), run when the path is on
    runtime: Callable | None = None  # runtime(choices, config): what the path sets among the model's run-time choices
    label: Callable[[Any], str | None] | None = None  # its part of the engine line (default: its name when on)
    bench_row: str | None = None  # its row in the end-to-end benchmark (None: no row of its own)
    turn_on: tuple | None = None  # the flags that turn the path on (default: --NAME on); also its benchmark row's
    replaces: tuple = ()  # earlier rows' paths this one does the work of, left off from its row
    check: Check | None = None
    needs_engine_optimizers: bool = False
    """the path builds, replaces or captures the optimizers and their steps, so it cannot apply to a model that builds
    and steps its own (the reference's way)"""

    def value_of(self, asked):
        """The config value of a flag value other than 'auto'."""
        return self.values.get(asked, asked)

    def describe(self, value):
        if self.label is not None:
            return self.label(value)
        return self.name if value not in (self.off, None) else None

    def on_flags(self):
        """The flags that turn this path on (its benchmark row's own flags)."""
        return list(self.turn_on) if self.turn_on is not None else [f"--{self.name}", "on"]
