"""GANLoss and the gradient penalty against hand formulas, ImagePool semantics, the reference's LR policies."""

import argparse
import random

import pytest
import torch

from fastp2p.image_pool import ImagePool
from fastp2p.losses import GANLoss, cal_gradient_penalty
from fastp2p.networks import define_D, get_scheduler


@pytest.fixture
def prediction():
    return torch.randn(2, 1, 5, 5, generator=torch.Generator().manual_seed(0))


def test_vanilla_is_bce_with_logits(prediction):
    loss = GANLoss("vanilla")
    sigmoid = torch.sigmoid(prediction)
    torch.testing.assert_close(loss(prediction, True), -torch.log(sigmoid).mean())
    torch.testing.assert_close(loss(prediction, False), -torch.log(1 - sigmoid).mean())


def test_lsgan_is_mean_squared_error_to_one_and_zero(prediction):
    loss = GANLoss("lsgan")
    torch.testing.assert_close(loss(prediction, True), ((prediction - 1) ** 2).mean())
    torch.testing.assert_close(loss(prediction, False), (prediction**2).mean())


def test_wgangp_is_the_signed_mean(prediction):
    loss = GANLoss("wgangp")
    torch.testing.assert_close(loss(prediction, True), -prediction.mean())
    torch.testing.assert_close(loss(prediction, False), prediction.mean())


def test_labels_are_buffers_and_custom_labels_are_used(prediction):
    loss = GANLoss("lsgan", target_real_label=0.9, target_fake_label=0.1)
    assert set(dict(loss.named_buffers())) == {"real_label", "fake_label"}
    torch.testing.assert_close(loss(prediction, True), ((prediction - 0.9) ** 2).mean())
    assert loss(prediction, False).dim() == 0


def test_unknown_gan_mode():
    with pytest.raises(ValueError, match="gan_mode 'hinge'; choose one of: vanilla, lsgan, wgangp"):
        GANLoss("hinge")


def test_gradient_penalty_of_a_linear_critic_is_known():
    """D(x) = sum(w * x) has gradient w everywhere: penalty = lambda * (||w|| - 1)^2."""
    critic = torch.nn.Conv2d(1, 1, kernel_size=4, bias=False)  # 4x4 input -> one output per image
    real, fake = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    expected = 10.0 * (critic.weight.norm() - 1) ** 2
    for kind in ("real", "fake", "mixed"):
        penalty, grads = cal_gradient_penalty(critic, real, fake, "cpu", type=kind)
        torch.testing.assert_close(penalty, expected)
        assert grads.shape == (3, 16)
    assert cal_gradient_penalty(critic, real, fake, "cpu", lambda_gp=0.0) == (0.0, None)
    with pytest.raises(ValueError, match="gradient penalty type 'both'"):
        cal_gradient_penalty(critic, real, fake, "cpu", type="both")


def test_gradient_penalty_backpropagates_into_the_discriminator():
    netD = define_D(3, 4, "basic", 3, "instance")
    real, fake = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    penalty, _ = cal_gradient_penalty(netD, real, fake, "cpu")
    penalty.backward()
    # every weight gets a gradient; biases do not shape d(D)/dx, so they may get none
    assert all(p.grad is not None for name, p in netD.named_parameters() if name.endswith("weight"))


def batch(*values):
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1, 1)


def test_pool_size_zero_passes_the_batch_through():
    x = torch.randn(2, 3, 4, 4)
    assert ImagePool(0).query(x) is x


def test_pool_fills_then_swaps_with_the_reference_draws():
    pool = ImagePool(2)
    torch.testing.assert_close(pool.query(batch(1, 2)), batch(1, 2))  # filling: returned as given
    random.seed(0)
    draws = []
    for _ in range(4):
        p = random.uniform(0, 1)
        draws.append((p, random.randint(0, 1) if p > 0.5 else None))
    random.seed(0)
    stored = [1.0, 2.0]
    for step, (p, slot) in enumerate(draws):
        new = 10.0 + step
        out = pool.query(batch(new))
        if slot is None:
            assert out.item() == new
        else:
            assert out.item() == stored[slot]
            stored[slot] = new
        assert [t.item() for t in pool.images] == stored


def test_pool_detaches_and_keeps_its_own_copy():
    pool = ImagePool(1)
    fake = torch.ones(1, 1, 2, 2, requires_grad=True) * 3
    out = pool.query(fake)
    assert not out.requires_grad and not pool.images[0].requires_grad
    fake.data.fill_(7)  # an overwritten output buffer must not change the history
    assert pool.images[0].max().item() == 3


def test_pool_state_round_trip_continues_identically():
    pool = ImagePool(3)
    random.seed(1)
    for i in range(5):
        pool.query(batch(i, i + 0.5))
    resumed = ImagePool(3)
    resumed.load_state_dict(pool.state_dict())
    random.seed(2)
    expected = [pool.query(batch(100 + i)).item() for i in range(6)]
    random.seed(2)
    got = [resumed.query(batch(100 + i)).item() for i in range(6)]
    assert got == expected and resumed.num_imgs == 3
    with pytest.raises(ValueError, match="--pool_size 4"):
        ImagePool(4).load_state_dict(pool.state_dict())


def lr_options(**overrides):
    values = dict(lr=0.0002, lr_policy="linear", n_epochs=100, n_epochs_decay=100, epoch_count=1, lr_decay_iters=50)
    values.update(overrides)
    return argparse.Namespace(**values)


def lrs_per_epoch(opt, metric=0.0):
    """The lr each training epoch epoch_count.. n_epochs+n_epochs_decay runs with (stepped after each)."""
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=opt.lr, betas=(0.5, 0.999))
    scheduler = get_scheduler(optimizer, opt)
    lrs = {}
    for epoch in range(opt.epoch_count, opt.n_epochs + opt.n_epochs_decay + 1):
        lrs[epoch] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step(metric) if opt.lr_policy == "plateau" else scheduler.step()
    return lrs


def test_linear_keeps_then_decays_to_near_zero():
    lrs = lrs_per_epoch(lr_options())
    assert lrs[1] == lrs[100] == 0.0002
    assert lrs[101] == pytest.approx(0.0002 * (1 - 1 / 101))
    assert lrs[200] == pytest.approx(0.0002 / 101)
    assert f"{lrs[100]:.7f} -> {lrs[101]:.7f}" == "0.0002000 -> 0.0001980"


def test_linear_resumed_at_epoch_count_recomputes_from_there():
    lrs = lrs_per_epoch(lr_options(epoch_count=150))
    assert lrs[150] == pytest.approx(0.0002 * (1 - 50 / 101))  # as epoch 150 of an uninterrupted run
    assert lrs[200] == pytest.approx(0.0002 / 101)


def test_step_divides_by_ten_every_lr_decay_iters_epochs():
    lrs = lrs_per_epoch(lr_options(lr_policy="step", lr_decay_iters=3, n_epochs=5, n_epochs_decay=3))
    assert [lrs[e] for e in range(1, 9)] == pytest.approx([2e-4] * 3 + [2e-5] * 3 + [2e-6] * 2)


def test_cosine_anneals_to_zero_over_n_epochs():
    lrs = lrs_per_epoch(lr_options(lr_policy="cosine", n_epochs=4, n_epochs_decay=0))
    assert [lrs[e] for e in range(1, 5)] == pytest.approx([2e-4, 1.7071e-4, 1e-4, 0.2929e-4], rel=1e-4)


def test_plateau_with_a_constant_metric_cuts_after_patience():
    lrs = lrs_per_epoch(lr_options(lr_policy="plateau", n_epochs=10, n_epochs_decay=5))
    assert [lrs[e] for e in range(1, 9)] == pytest.approx([2e-4] * 7 + [4e-5])
    assert lrs[14] == pytest.approx(8e-6)


def test_unknown_lr_policy():
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    with pytest.raises(ValueError, match="lr_policy 'exp'; choose one of: linear, step, plateau, cosine"):
        get_scheduler(optimizer, lr_options(lr_policy="exp"))
