"""Triton kernels of fastp2p, installed as ``fastp2p.kernels``."""

from .losses import GanLossFunction, L1LossFunction, gan_loss, gan_loss_forward, gan_target, l1_loss, l1_loss_forward
from .norm_act import FusedNormAct, NormActFunction, norm_act_backward, norm_act_forward
from .pad import FusedReflectionPad2d, ReflectionPadFunction, reflection_pad_backward, reflection_pad_forward

__all__ = [
    "FusedNormAct", "NormActFunction", "norm_act_backward", "norm_act_forward",
    "FusedReflectionPad2d", "ReflectionPadFunction", "reflection_pad_backward", "reflection_pad_forward",
    "GanLossFunction", "L1LossFunction", "gan_loss", "gan_loss_forward", "gan_target", "l1_loss", "l1_loss_forward",
]
