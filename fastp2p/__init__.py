"""fastp2p: a drop-in, faster trainer for pix2pix and CycleGAN.

The plain PyTorch path (fp32, NCHW, eager) is the reference that every fast path is tested against.
"""

__version__ = "0.1.0"
