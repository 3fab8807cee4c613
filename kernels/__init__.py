"""Triton kernels of fastp2p, installed as ``fastp2p.kernels``."""

from .norm_act import FusedNormAct, NormActFunction, norm_act_backward, norm_act_forward

__all__ = ["FusedNormAct", "NormActFunction", "norm_act_backward", "norm_act_forward"]
