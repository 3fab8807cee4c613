"""Triton kernels of fastp2p, installed as ``fastp2p.kernels``."""
