"""Triton kernels of fastp2p.

One op per group of files: the fused norm + activation has its Triton kernels in norm_act_kernels.py, their launch
in norm_act.py and its autograd Function and nn.Module in norm_act_module.py, and the implicit-GEMM conv with its
norm prologue and statistics epilogue likewise in conv_kernels.py, conv.py and conv_module.py; pad.py (reflection
pad) and losses.py (GAN and L1 losses) hold all three parts of their smaller ops, adam.py the Adam kernel and the
optimizer that launches it; launch.py the launch arithmetic they share.

The names below are loaded on first use (PEP 562): Triton is an optional extra, and fastp2p.engine imports this
package at its top, so importing it needs no Triton and spends none of Triton's import time (a second on a CPU
machine) in runs, or spawned loader workers, that launch no kernel.
"""

import importlib

_EXPORTS = {
    "norm_act_module": ("FusedNormAct", "NormActFunction"),
    "norm_act": ("norm_act_backward", "norm_act_forward"),
    "conv_module": ("ConvFunction", "ConvNorm", "FusedConv", "NormFunction"),
    "conv": ("conv_forward", "conv_input_grad", "conv_weight_grad"),
    "pad": ("FusedReflectionPad2d", "ReflectionPadFunction", "reflection_pad_backward", "reflection_pad_forward"),
    "losses": ("FusedGANLoss", "FusedL1Loss", "GanLossFunction", "L1LossFunction", "gan_loss", "gan_loss_forward",
               "gan_target", "l1_loss", "l1_loss_forward"),
    "adam": ("TritonAdam",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups find it without this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
