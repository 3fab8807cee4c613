"""--overlap_optimizer: each parameter stepped from its gradient hook trains bit for bit as stepping after backward."""

import copy

import pytest
import torch
from torch import nn

from tests.conftest import requires_cuda
from tests.engine.helpers import NO_POOL, OFF, STEPS, assert_same_training, train_steps


@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
@pytest.mark.parametrize("flags", [[], ["--fused_adam", "on"], ["--amp", "bf16", "--step_cast", "on"]],
                         ids=["adam", "fused_adam", "bf16_step_cast"])
def test_optimizer_stepped_in_backward_trains_bit_for_bit_like_after_backward(model_name, flags):
    """--overlap_optimizer steps each parameter from its gradient hook: the same Adam on the same final gradient, so
    the same bits as one step after backward, loss by loss and weight by weight, also with the step copies, which
    must then follow each parameter's own step. The model's optimizers hold the moments, as checkpoints need."""
    overlapped = train_steps(model_name, OFF + flags + ["--overlap_optimizer", "on"], STEPS)
    assert_same_training(overlapped, train_steps(model_name, OFF + flags, STEPS), 0, 0, 0)


def test_moments_of_steps_in_backward_live_in_the_models_optimizer_and_follow_its_schedule():
    """The per-parameter steps keep their state in the model's optimizer (so its state_dict is a checkpoint's, and
    loading one into it is what they continue from) and read its learning rate as the LR schedule sets it."""
    from fastp2p.engine.overlap import StepsInBackward

    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    stepper = StepsInBackward(optimizer, torch.device("cpu"))
    net(torch.randn(2, 4)).sum().backward()
    stepper.finish()
    saved = copy.deepcopy(optimizer.state_dict())
    assert [saved["state"][i]["step"].item() for i in range(2)] == [1.0, 1.0]
    optimizer.param_groups[0]["lr"] = 0.0  # as a schedule at its end
    before = [p.detach().clone() for p in net.parameters()]
    optimizer.zero_grad()
    net(torch.randn(2, 4)).sum().backward()
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    optimizer.load_state_dict(saved)  # a resume replaces the optimizer's state object
    optimizer.param_groups[0]["lr"] = 0.1
    optimizer.zero_grad()
    net(torch.randn(2, 4)).sum().backward()
    assert [optimizer.state[p]["step"].item() for p in net.parameters()] == [2.0, 2.0]


@requires_cuda
@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
def test_optimizer_in_backward_on_a_side_stream_in_a_cuda_graph_trains_like_after_backward(model_name):
    """The per-parameter steps on their side stream, captured in the iteration's graph with the step copies they
    rewrite, against the same graphed run stepping after backward (cuDNN may pick other algorithms per capture)."""
    flags = OFF + NO_POOL + ["--cuda_graph", "on", "--fused_adam", "on", "--amp", "bf16", "--step_cast", "on"]
    run = train_steps(model_name, flags + ["--overlap_optimizer", "on"], STEPS + 6)
    assert_same_training(run, train_steps(model_name, flags, STEPS + 6), 5e-3, 1e-4, 1e-4)


