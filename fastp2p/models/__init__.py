"""``--model`` name -> model class."""

from fastp2p.distributed import print_main
from fastp2p.models.base_model import BaseModel
from fastp2p.models.cycle_gan_model import CycleGANModel
from fastp2p.models.pix2pix_model import Pix2PixModel
from fastp2p.models.test_model import TestModel

MODELS = {"pix2pix": Pix2PixModel, "cycle_gan": CycleGANModel, "test": TestModel}

__all__ = ["BaseModel", "CycleGANModel", "MODELS", "Pix2PixModel", "TestModel", "create_model"]


def create_model(opt):
    """Build the model named by ``opt.model``; call ``model.setup(opt)`` next to initialize or load weights."""
    if opt.model not in MODELS:
        raise ValueError(f"unknown model {opt.model!r}; choose one of: {', '.join(MODELS)}")
    model = MODELS[opt.model](opt)
    print_main(f"model [{type(model).__name__}] was created")
    return model
