"""--batch_passes: one forward for a network's independent passes of a step, which must train as the separate passes
do where the norms are per sample."""

import pytest
import torch

from fastp2p.engine.passes import BATCH_PASSES
from tests.engine.helpers import OFF, STEPS, assert_same_training, make_opt, prepared, train_steps


def test_batched_discriminator_passes_train_like_separate_ones_with_instance_norm():
    """pix2pix batches D's fake and real passes when its norms are per sample (the default BatchNorm forbids it,
    CycleGAN's batching is covered by test_parity)."""
    run = train_steps("pix2pix", OFF + ["--norm", "instance", "--batch_passes", "on"], STEPS)
    reference = train_steps("pix2pix", OFF + ["--norm", "instance"], STEPS)
    assert_same_training(run, reference, *BATCH_PASSES.check.tolerance.limits())


@pytest.mark.parametrize("identity", [True, False], ids=["identity", "no_identity"])
def test_batched_cycle_gan_passes_count_and_shapes(identity):
    """Three generator passes instead of six (four without identity images) over one image: G_A over the real A
    (and B) images, G_B over the real B, the fake B (the A cycle) (and the real A) images, then G_A over the fake A
    (the B cycle); D once per step. Without identity images the run still trains like the reference."""
    flags = ["--batch_passes", "on", "--lambda_identity", "0.5" if identity else "0"]
    opt = make_opt("cycle_gan", *OFF, *flags, "--batch_size", "1")
    model, train_step = prepared(opt)
    batches = {name: [] for name in model.model_names}
    for name in model.model_names:
        getattr(model, "net" + name).register_forward_hook(
            lambda module, args, output, name=name: batches[name].append(args[0].shape[0]))
    train_step({"A": torch.rand(1, 3, 32, 32), "B": torch.rand(1, 3, 32, 32), "A_paths": ["a"], "B_paths": ["b"]})
    expected = {"G_A": [2, 1], "G_B": [3]} if identity else {"G_A": [1, 1], "G_B": [2]}
    assert batches == {**expected, "D_A": [1, 2], "D_B": [1, 2]}
    assert model.fake_B.shape == model.rec_A.shape == model.rec_B.shape == model.real_A.shape
    if identity:
        assert model.idt_A.shape == model.idt_B.shape == model.real_B.shape
    else:
        # G_B's batch of two (real B, fake B) sums its conv gradients in another order than two passes do: a few
        # rounding-level gradient elements change sign, and Adam moves those by up to lr (2e-4) a step, in
        # about 1% of a weight's elements here. A wrong gradient would move most elements by ~lr every step.
        reference = train_steps("cycle_gan", OFF + ["--lambda_identity", "0"], STEPS)
        assert_same_training(train_steps("cycle_gan", OFF + flags, STEPS), reference, 1e-4, 1e-5, 1.5e-4)


