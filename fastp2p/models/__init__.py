"""``--model`` name -> model class (a built-in, else a user's own: fastp2p.extensions), and ``create_model``."""

import re

import torch

from fastp2p.distributed import print_main
from fastp2p.errors import OptionError, first_line
from fastp2p.extensions import find_class
from fastp2p.models.base_model import BaseModel
from fastp2p.models.colorization_model import ColorizationModel
from fastp2p.models.cycle_gan_model import CycleGANModel
from fastp2p.models.pix2pix_model import Pix2PixModel
from fastp2p.models.runtime import ModelRuntime, building_with
from fastp2p.models.template_model import TemplateModel
from fastp2p.models.test_model import TestModel

MODELS = {"pix2pix": Pix2PixModel, "cycle_gan": CycleGANModel, "test": TestModel, "template": TemplateModel,
          "colorization": ColorizationModel}
"""the built-in models; any other --model name is looked up as the reference looks up its own (find_model)"""

__all__ = ["BaseModel", "ColorizationModel", "CycleGANModel", "MODELS", "ModelRuntime", "Pix2PixModel", "TemplateModel",
           "TestModel", "create_model", "find_model"]


def find_model(name):
    """The model class ``--model name`` means: a built-in, a user's ``NAME_model`` module's class, or
    ``package.module:Class`` (fastp2p.extensions); an OptionError in one line otherwise."""
    return find_class(name, "model", tuple(MODELS.items()), BaseModel)


def is_out_of_memory(error):
    """Whether ``error`` is an allocation that failed (MemoryError, torch.OutOfMemoryError, the CPU allocator's)."""
    text = str(error)
    return (isinstance(error, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text
            or "out of memory" in text)


def allocation_failure(error):
    """What an out-of-memory error asked for, in GiB where torch says, else its first line."""
    asked = re.search(r"allocate (\d+) bytes", str(error))
    if asked:
        return f"one of their tensors alone asked for {int(asked[1]) / 2**30:,.1f} GiB"
    return first_line(error)[:200]


def create_model(opt, runtime=None):
    """Build the model named by ``opt.model`` on ``runtime`` (the engine's run-time choices and device; by default
    the reference path on the CPU); call ``model.setup(opt)`` next to initialize or load weights."""
    model_class = find_model(opt.model)
    runtime = runtime or ModelRuntime()
    with building_with(runtime):
        try:
            model = model_class(opt)
        except (MemoryError, RuntimeError) as error:  # torch's CPU and CUDA out-of-memory errors are RuntimeErrors
            if not is_out_of_memory(error):
                raise
            raise OptionError(f"the networks of --model {opt.model} with --ngf {opt.ngf} and --ndf {opt.ndf} do not fit "
                              f"in the memory of {runtime.device} ({allocation_failure(error)}); use smaller "
                              f"--ngf/--ndf") from None
    print_main(f"model [{type(model).__name__}] was created")
    return model
