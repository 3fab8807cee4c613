"""What the engine's tests share: the device, the flags that turn every path off, small models trained step by step
from a seed, and comparisons that say where two runs part."""

import dataclasses
import math

import pytest
import torch
import torch.distributed as dist

from fastp2p import networks
from fastp2p.engine import prepare_model, resolve_engine, runtime_for
from fastp2p import parity
from fastp2p.engine.path import Tolerance
from fastp2p.engine.registry import PATHS
from fastp2p.models import create_model
from fastp2p.options import parse_options

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
OFF = [part for path in PATHS if path.off_flag is not None for part in (f"--{path.name}", path.off_flag)]
"""every fast path off, by each path's own 'off' flag value (the reference path without --reference)"""
STEPS = 4


@pytest.fixture(autouse=True, scope="module")
def full_fp32_convolutions():
    """cuDNN runs fp32 convolutions in TF32 by default; the fp32 comparisons here need true fp32.
    Module scope, so that it is in force before the module-scoped reference runs are made."""
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def assert_close(actual, expected, rtol, atol, what):
    if not torch.allclose(actual.float(), expected.float(), rtol=rtol, atol=atol):
        diff = (actual.float() - expected.float()).abs()
        worst = torch.topk(diff.flatten(), min(5, diff.numel()))
        raise AssertionError(f"{what}: max |diff| {diff.max():.3g} (rtol {rtol}, atol {atol}); worst at flat "
                             f"indices {worst.indices.tolist()}: {actual.flatten()[worst.indices].tolist()} vs "
                             f"{expected.flatten()[worst.indices].tolist()}")


NETS = {
    "unet_128_batch": lambda: networks.define_G(3, 3, 2, "unet_128", "batch", use_dropout=False),
    "unet_128_instance": lambda: networks.define_G(3, 3, 2, "unet_128", "instance", use_dropout=False),
    "resnet_6blocks_instance": lambda: networks.define_G(3, 3, 4, "resnet_6blocks", "instance"),
    "basic_D_batch": lambda: networks.define_D(6, 4, "basic", 3, "batch"),
    "pixel_D_batch": lambda: networks.define_D(6, 4, "pixel", 3, "batch"),
}


def make_opt(model, *flags):
    common = ["--gpu_ids", "0" if DEVICE.type == "cuda" else "-1", "--ngf", "4", "--ndf", "4",
              "--netG", "resnet_6blocks", "--load_size", "32", "--crop_size", "32", "--seed", "0",
              "--no_tensorboard", "--checkpoints_dir", "/nonexistent"]
    if model == "pix2pix":
        common += ["--model", "pix2pix", "--no_dropout"]
    else:
        common += ["--model", "cycle_gan", "--pool_size", "2"]
    return parse_options(common + list(flags))


def prepared(opt, **config_changes):
    """(model, training step) of ``opt`` on DEVICE, as the trainer builds them; ``config_changes`` replace fields of
    the EngineConfig the flags resolve to."""
    config = dataclasses.replace(resolve_engine(opt, DEVICE), **config_changes)
    model = create_model(opt, runtime_for(config, DEVICE))
    model.setup(opt)
    return model, prepare_model(model, config)


def train_steps(model_name, flags, steps, batch_size=2, image_size=32, **config_changes):
    """A parity.Run (each step's losses, the last gradients, the final weights) of ``steps`` steps from seed 0 on fixed
    random batches of image_size pixels a side; ``config_changes`` replace fields of the EngineConfig the flags
    resolve to."""
    opt = make_opt(model_name, *flags, "--batch_size", str(batch_size))
    config = dataclasses.replace(resolve_engine(opt, DEVICE), **config_changes)
    return parity.run(opt, config, DEVICE, parity.synthetic_batches(opt, [batch_size] * steps, size=image_size))


def assert_same_training(run, reference, loss_rtol, loss_atol, weight_atol, weight_share=0, weight_rtol=0):
    """Every loss of every step within (rtol, atol), and every weight element within weight_atol (+ weight_rtol of
    its value), but for the conv biases an InstanceNorm cancels and a share ``weight_share`` of each weight's
    elements (parity.compare)."""
    tolerance = Tolerance(loss_rtol, loss_atol, weight_atol, grad_rel_l2=math.inf, precision="test",
                          weight_share=weight_share, weight_rtol=weight_rtol)
    verdict = parity.compare(run, reference, tolerance)
    assert verdict.ok, verdict.why


NO_POOL = ["--pool_size", "0"]


@pytest.fixture
def one_process_group():
    """A process group of this process alone (NCCL on a GPU, gloo on the CPU): DDP then runs its reducer and
    all-reduces as with many processes."""
    if DEVICE.type == "cuda":
        if not dist.is_nccl_available():
            pytest.skip("needs torch.distributed with NCCL")
        device = torch.device("cuda", torch.cuda.current_device())
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=device)
    else:
        if not dist.is_gloo_available():
            pytest.skip("needs torch.distributed with gloo")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


