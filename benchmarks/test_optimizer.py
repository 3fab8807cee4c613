"""The optimizer alone: one Adam step over a model's trained parameters, by torch's Adam (the reference row) and by the
Triton Adam of --adam_kernel triton, each without and with --step_cast's bf16 weight copy, against the copy roof. At
batch 1 the step is a large share of an iteration, and memory-bound: fp32 Adam reads the parameter, its gradient and
both moments and writes three of them back, 28 bytes per parameter; torch's step copy reads 4 and writes 2 more per
conv parameter, the Triton kernel writes 2 from the value it has just computed.

On a GPU torch's step is its fused capturable Adam and each step is replayed as one CUDA graph (as the trainer's
graphed step runs it); on the CPU torch's is the trainer's CPU Adam and the Triton kernel runs in Triton's interpreter
(a check that it runs, not a figure).
"""

import pytest
import torch

from benchmarks import rows
from fastp2p import networks
from fastp2p.engine.config import EngineConfig
from fastp2p.engine.cuda_graph import capture_after_warmup
from fastp2p.engine.optimizers import build_adam
from fastp2p.engine.weight_cast import StepCopies

ADAM_BYTES_PER_PARAMETER = 28  # fp32: read p, grad, exp_avg, exp_avg_sq; write p, exp_avg, exp_avg_sq
COPY_BYTES_PER_PARAMETER = {"torch": 6, "triton": 2}  # read the fp32 weight (torch's copy only), write its bf16 copy
ROWS = {"adam": ("torch", False), "adam+step_copy": ("torch", True), "triton_adam": ("triton", False),
        "triton_adam+step_copy": ("triton", True)}
ROUNDS = {"cuda": 5, "cpu": 3}


def generate(metafunc, size, device):
    if "row" in metafunc.fixturenames:
        metafunc.parametrize("model", ["pix2pix", "cycle_gan"])
        metafunc.parametrize("row", list(ROWS))


def trained_networks(model, size):
    """The networks one of the model's training iterations updates, with its default flags (small: ngf/ndf 16)."""
    small = size.name == "small"
    width = 16 if small else 64
    if model == "pix2pix":
        return [networks.define_G(3, 3, width, "unet_128" if small else "unet_256", "batch", True),
                networks.define_D(6, width, "basic", 3, "batch")]
    generator = "resnet_6blocks" if small else "resnet_9blocks"
    return [networks.define_G(3, 3, width, generator, "instance", False) for _ in range(2)] + [
        networks.define_D(3, width, "basic", 3, "instance") for _ in range(2)]


@pytest.fixture(scope="module")
def copy_roof(device):
    return rows.copy_gbps(device)


def test_optimizer(timed, benchmark, model, row, size, device, copy_roof):
    kernel, step_cast = ROWS[row]
    cuda = device.type == "cuda"
    torch.manual_seed(0)
    nets = [net.to(device).to(memory_format=torch.channels_last) for net in trained_networks(model, size)]
    params = [p for net in nets for p in net.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    config = EngineConfig(fused_adam=cuda, adam_kernel=kernel, adam_moments=torch.float32, cuda_graph=cuda)
    optimizer = build_adam(config, params, 2e-4, 0.5, device)
    copied = 0
    if step_cast:
        for net in nets:
            copies = StepCopies(net, device.type, torch.bfloat16)
            copies.refresh_after_steps_of([optimizer])
            copied += sum(c.numel() for c in copies.copies)
    step = capture_after_warmup(optimizer.step, torch.cuda.Stream(device))[0].replay if cuda else optimizer.step
    count = sum(p.numel() for p in params)
    moved = ADAM_BYTES_PER_PARAMETER * count + COPY_BYTES_PER_PARAMETER[kernel] * copied

    timed(step, group=f"optimizer {model}", row=row, reference=row == "adam", units=1, unit="steps",
          rounds=ROUNDS[device.type], parameters=count, copied_parameters=copied, bytes=moved,
          interpreter=kernel == "triton" and not cuda)
    if not benchmark.disabled:
        gbps = moved * benchmark.extra_info["steps_per_s"] / 1e9
        benchmark.extra_info.update(gb_per_s=gbps, of_copy_roof=gbps / copy_roof, copy_roof_gb_per_s=copy_roof)
    assert all(torch.isfinite(p).all() for p in params)
