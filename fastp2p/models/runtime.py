"""The run-time choices a model takes from the engine instead of making them itself.

A model builds its networks, losses and image pools and writes its training step; how the step runs (the input's
memory format, one batch for a network's independent passes, two streams for its independent updates, optimizer
steps taken during backward, fused losses, a device-side image pool for CUDA graphs) is the engine's to choose.
It hands the model one ``ModelRuntime`` when the model is built (``create_model``), and the model reads it there and
in its step; nothing else of the model is written from outside it. The default is the reference path.

The runtime reaches ``BaseModel.__init__`` through a context variable set by ``create_model``, so a model class
written for the reference's API (``__init__(self, opt)``) gets it too.
"""

import contextlib
import contextvars
import dataclasses
from typing import Callable

import torch
from torch import nn

from fastp2p.image_pool import ImagePool
from fastp2p.losses import GANLoss


def run_in_order(first, second):
    """first() then second(): the plain way to run two independent parts of a step."""
    first()
    second()


@dataclasses.dataclass(frozen=True)
class ModelRuntime:
    device: torch.device = torch.device("cpu")
    memory_format: torch.memory_format = torch.contiguous_format
    """the layout the model's inputs are given (the networks' layout)"""
    batch_passes: bool = False
    """one forward for a network's independent passes of a step (see BaseModel.run_passes)"""
    run_independent: Callable = run_in_order
    """runs two parts of a step that share no network, input or gradient (two CUDA streams under --two_streams)"""
    image_pool: Callable[[int], ImagePool] = ImagePool
    gan_loss: Callable[[str], nn.Module] = GANLoss
    l1_loss: Callable[[], nn.Module] = nn.L1Loss
    steps_in_backward: dict = dataclasses.field(default_factory=dict)
    """optimizer -> what steps its parameters during backward (--overlap_optimizer); the engine fills it once the
    optimizers exist"""


_CURRENT = contextvars.ContextVar("fastp2p_model_runtime", default=None)


@contextlib.contextmanager
def building_with(runtime):
    """Models built inside this block take ``runtime``."""
    token = _CURRENT.set(runtime)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_runtime(device=None):
    """The runtime of the model being built: ``building_with``'s, else the reference path's on ``device``."""
    runtime = _CURRENT.get()
    if runtime is not None:
        return runtime
    return ModelRuntime(device=torch.device(device) if device is not None else torch.device("cpu"))
