"""DDP in a process group of one process (gloo on the CPU, NCCL and a CUDA graph on a GPU) trains like no DDP."""

import pytest

from fastp2p.engine.cuda_graph import DDP_WARMUP_STEPS
from tests.engine.helpers import DEVICE, NO_POOL, OFF, STEPS, assert_same_training, train_steps


@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
def test_ddp_in_one_process_trains_like_no_ddp(model_name, one_process_group):
    """On a GPU with the step as a CUDA graph: DDP built on the capture stream, 11 eager warm-up steps, then
    replays holding the all-reduces (the eager DDP path is tested across processes in test_ddp.py)."""
    cuda = DEVICE.type == "cuda"
    steps = DDP_WARMUP_STEPS + 5 if cuda else STEPS
    flags = OFF + NO_POOL + ["--fused_adam", "on" if cuda else "off"]
    run = train_steps(model_name, flags, steps, ddp=True, cuda_graph=cuda)
    plain = train_steps(model_name, flags, steps)
    assert_same_training(run, plain, 5e-3, 1e-4, 1e-4)
