"""``--model`` name -> model class, and ``create_model``."""

from fastp2p.distributed import print_main
from fastp2p.models.base_model import BaseModel
from fastp2p.models.cycle_gan_model import CycleGANModel
from fastp2p.models.pix2pix_model import Pix2PixModel
from fastp2p.models.runtime import ModelRuntime, building_with
from fastp2p.models.test_model import TestModel

MODELS = {"pix2pix": Pix2PixModel, "cycle_gan": CycleGANModel, "test": TestModel}

__all__ = ["BaseModel", "CycleGANModel", "MODELS", "ModelRuntime", "Pix2PixModel", "TestModel", "create_model"]


def create_model(opt, runtime=None):
    """Build the model named by ``opt.model`` on ``runtime`` (the engine's run-time choices and device; by default
    the reference path on the CPU); call ``model.setup(opt)`` next to initialize or load weights."""
    if opt.model not in MODELS:
        raise ValueError(f"unknown model {opt.model!r}; choose one of: {', '.join(MODELS)}")
    with building_with(runtime or ModelRuntime()):
        model = MODELS[opt.model](opt)
    print_main(f"model [{type(model).__name__}] was created")
    return model
