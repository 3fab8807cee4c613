"""CycleGAN's D_A and D_B updates run by the model's run_independent, and on two CUDA streams (--two_streams)."""

import pytest
import torch

from fastp2p.models.base_model import BaseModel
from tests.conftest import requires_cuda
from tests.engine.helpers import NO_POOL, OFF, STEPS, assert_same_training, train_steps


def test_d_updates_run_independently_share_no_gradient_and_train_like_the_reference(monkeypatch, reference_runs):
    """CycleGAN hands D_A's and D_B's whole updates to run_independent (which --two_streams runs on two streams):
    after the first, D_A has all its gradients and D_B none; the second leaves D_A's untouched; and the step, with the
    two in this order, trains bit for bit like the reference."""
    calls = []

    def checked(self, first, second):
        d_a, d_b = list(self.netD_A.parameters()), list(self.netD_B.parameters())
        assert all(p.grad is None for p in d_a + d_b)
        first()
        assert all(p.grad is not None for p in d_a) and all(p.grad is None for p in d_b)
        after_first = [p.grad.clone() for p in d_a]
        second()
        assert all(p.grad is not None for p in d_b)
        assert all(torch.equal(p.grad, grad) for p, grad in zip(d_a, after_first))
        calls.append((first.__name__, second.__name__))

    monkeypatch.setattr(BaseModel, "run_independent", checked)
    run = train_steps("cycle_gan", OFF, STEPS)
    assert calls == [("backward_D_A", "backward_D_B")] * STEPS
    assert_same_training(run, reference_runs["cycle_gan"], 0, 0, 0)


@requires_cuda
@pytest.mark.parametrize("graph", ["eager", "cuda_graph"])
def test_two_streams_train_like_one(graph):
    """D_B's update on the side stream, eager and captured in the iteration's graph (fork and join), against the same
    run on one stream: the same kernels on the same inputs (cuDNN may pick other algorithms per capture)."""
    flags = OFF + NO_POOL + ["--fused_adam", "on", "--amp", "bf16", "--step_cast", "on", "--fused_kernels", "on",
                             "--batch_passes", "on", "--cuda_graph", "on" if graph == "cuda_graph" else "off"]
    run = train_steps("cycle_gan", flags + ["--two_streams", "on"], STEPS + 6)
    assert_same_training(run, train_steps("cycle_gan", flags, STEPS + 6), 5e-3, 1e-4, 1e-4)
