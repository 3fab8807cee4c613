"""--compile [MODE]: torch.compile for every network, the rival a user would try first (instead of CUDA graphs and
the fused kernels, which it traces and fuses its own way)."""

from fastp2p.engine.path import REORDERED_FP32, Check, FastPath, Stage

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compile_networks(prep):
    mode = prep.config.compile
    for net in prep.networks:
        net.compile(mode=None if mode == "default" else mode)


COMPILE = FastPath(
    "compile", "torch.compile every network (instead of CUDA graphs), in torch.compile's mode given (--compile alone: "
               "its default mode)",
    choices=COMPILE_MODES, default=None, values={}, off=None, off_flag=None, auto=lambda s: None,
    flag=dict(nargs="?", const="default"), hooks={Stage.COMPILE: compile_networks},
    label=lambda mode: f"compile ({mode})" if mode else None, turn_on=("--compile",), check=Check(REORDERED_FP32))
