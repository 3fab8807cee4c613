"""What the engine's tests share: the device, the flags that turn every path off, small models trained step by step
from a seed, and comparisons that say where two runs part."""

import dataclasses
import random

import pytest
import torch
import torch.distributed as dist

from fastp2p import networks
from fastp2p.checkpoint import unwrap
from fastp2p.engine import prepare_model, resolve_engine, runtime_for
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
    """Per-step losses and final weights of a run from seed 0 on fixed random batches of image_size pixels a side;
    ``config_changes`` replace fields of the EngineConfig the flags resolve to."""
    torch.manual_seed(0)
    random.seed(0)
    model, train_step = prepared(make_opt(model_name, *flags, "--batch_size", str(batch_size)), **config_changes)
    gen = torch.Generator().manual_seed(1)
    history = []
    for _ in range(steps):
        batch = {"A": torch.rand(batch_size, 3, image_size, image_size, generator=gen) * 2 - 1,
                 "B": torch.rand(batch_size, 3, image_size, image_size, generator=gen) * 2 - 1,
                 "A_paths": ["a"] * batch_size, "B_paths": ["b"] * batch_size}
        train_step(batch)
        history.append(model.get_current_losses())
    weights = {name: {k: v.detach().float().cpu() for k, v in unwrap(net).state_dict().items()}
               for name, net in model.networks()}
    ignored = {name: bias_before_instance_norm(net) for name, net in model.networks()}
    return history, weights, ignored


def bias_before_instance_norm(net):
    """Conv biases that InstanceNorm cancels: their true gradient is 0, so Adam steps them by the sign of
    rounding noise, differently in any two runs, without any effect on the outputs."""
    names = []
    for prefix, module in net.named_modules():
        if isinstance(module, torch.nn.Sequential):
            for i in range(len(module) - 1):
                if getattr(module[i], "bias", None) is not None and isinstance(module[i + 1], torch.nn.InstanceNorm2d):
                    names.append(f"{prefix}.{i}.bias".lstrip("."))
    return names


def assert_same_training(run, reference, loss_rtol, loss_atol, weight_atol):
    (history, weights, _), (history_ref, weights_ref, ignored) = run, reference
    for step, (losses, losses_ref) in enumerate(zip(history, history_ref)):
        for name in losses_ref:
            actual, expected = torch.tensor(losses[name]), torch.tensor(losses_ref[name])
            assert_close(actual, expected, loss_rtol, loss_atol, f"step {step} loss {name}")
    for net in weights_ref:
        for key in weights_ref[net]:
            if key in ignored[net]:
                continue
            assert_close(weights[net][key], weights_ref[net][key], 0, weight_atol, f"{net}.{key}")


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


