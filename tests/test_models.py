"""pix2pix, CycleGAN and the test model against hand-written steps that follow the reference trainer's models,
plus checkpoint I/O.

The hand-written side uses tests/reference_networks.py, plain torch.optim.Adam and the loss formulas
written out, so it shares no model code with fastp2p.
"""

import argparse
import random

import pytest
import torch
import torch.nn.functional as F

from fastp2p.checkpoint_sets import CheckpointSet
from fastp2p.engine import EngineConfig, prepare_model
from fastp2p.errors import CheckpointError
from fastp2p.models import create_model
from fastp2p.networks import init_weights
from tests.reference_networks import reference_D, reference_G


def make_opt(tmp_path, model="pix2pix", **overrides):
    """The options the trainer hands over, at a tiny size (ngf = ndf = 4)."""
    values = dict(model=model, isTrain=True, continue_train=False, epoch="latest", load_iter=0,
                  checkpoints_dir=str(tmp_path), name="exp", verbose=False, device=torch.device("cpu"),
                  input_nc=3, output_nc=3, ngf=4, ndf=4, netD="basic", n_layers_D=3, init_type="normal",
                  init_gain=0.02, lr=0.0002, beta1=0.5, lr_policy="linear", n_epochs=100, n_epochs_decay=100,
                  epoch_count=1, lr_decay_iters=50, direction="AtoB", model_suffix="", preprocess="resize_and_crop")
    if model == "cycle_gan":
        values.update(netG="resnet_6blocks", norm="instance", no_dropout=True, gan_mode="lsgan", pool_size=50,
                      lambda_A=10.0, lambda_B=10.0, lambda_identity=0.5, dataset_mode="unaligned")
    else:
        values.update(netG="unet_128", norm="batch", no_dropout=False, gan_mode="vanilla", pool_size=0,
                      lambda_L1=100.0, dataset_mode="aligned" if model == "pix2pix" else "single")
    values.update(overrides)
    return argparse.Namespace(**values)


def make_batches(n, batch_size, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"A": torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1,
             "B": torch.rand(batch_size, 3, size, size, generator=g) * 2 - 1,
             "A_paths": [f"a{i}.png"] * batch_size, "B_paths": [f"b{i}.png"] * batch_size} for i in range(n)]


def save_networks(model, prefix):
    """Write the model's network files for ``prefix`` as the trainer does, as one checkpoint set."""
    with CheckpointSet(model.save_dir) as files:
        for filename, state in model.network_files(prefix):
            files.save(filename, state)


def built_model(opt, seed=0):
    torch.manual_seed(seed)
    model = create_model(opt)
    model.setup(opt)
    if model.isTrain:
        prepare_model(model, EngineConfig())  # the reference path: the reference's Adam and schedulers
    return model


def adam(params, opt):
    return torch.optim.Adam(params, lr=opt.lr, betas=(opt.beta1, 0.999))


def freeze(nets, flag):
    for net in nets:
        for p in net.parameters():
            p.requires_grad = flag


def bce_real(pred):
    return F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred))


def bce_fake(pred):
    return F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred))


def mse_real(pred):
    return ((pred - 1) ** 2).mean()


def mse_fake(pred):
    return (pred**2).mean()


def l1(a, b):
    return (a - b).abs().mean()


def assert_losses_close(got, expected):
    assert list(got) == list(expected)
    for name in expected:
        assert got[name] == pytest.approx(expected[name], rel=1e-5, abs=1e-7), name


def assert_same_weights(ours, theirs):
    theirs_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, theirs_state[key], rtol=1e-5, atol=1e-7, msg=key)


def test_pix2pix_steps_equal_the_hand_written_step(tmp_path):
    opt = make_opt(tmp_path)
    model = built_model(opt, seed=3)

    torch.manual_seed(3)  # the reference's RNG order: build G, build D, then init G, init D
    G = reference_G(3, 3, 4, "unet_128", "batch", True)
    D = reference_D(6, 4, "basic", 3, "batch")
    init_weights(G)
    init_weights(D)
    assert_same_weights(model.netG, G)
    assert_same_weights(model.netD, D)
    opt_G, opt_D = adam(G.parameters(), opt), adam(D.parameters(), opt)

    for step, data in enumerate(make_batches(3, 2, 128)):
        torch.manual_seed(100 + step)  # same dropout masks on both sides
        model.set_input(data)
        model.optimize_parameters()
        got = model.get_current_losses()
        assert all(isinstance(v, float) for v in got.values())
        assert not any(p.requires_grad for p in model.netD.parameters())
        assert all(p.requires_grad for p in model.netG.parameters())

        torch.manual_seed(100 + step)
        real_A, real_B = data["A"], data["B"]
        fake_B = G(real_A)
        freeze([D], True)
        opt_D.zero_grad()
        loss_D_fake = bce_fake(D(torch.cat((real_A, fake_B), 1).detach()))
        loss_D_real = bce_real(D(torch.cat((real_A, real_B), 1)))
        ((loss_D_fake + loss_D_real) * 0.5).backward()
        opt_D.step()
        freeze([D], False)
        opt_G.zero_grad()
        loss_G_GAN = bce_real(D(torch.cat((real_A, fake_B), 1)))
        loss_G_L1 = l1(fake_B, real_B) * 100.0
        (loss_G_GAN + loss_G_L1).backward()
        opt_G.step()
        assert_losses_close(got, {"G_GAN": loss_G_GAN.item(), "G_L1": loss_G_L1.item(),
                                  "D_real": loss_D_real.item(), "D_fake": loss_D_fake.item()})
    assert_same_weights(model.netG, G)
    assert_same_weights(model.netD, D)
    visuals = model.get_current_visuals()
    assert list(visuals) == ["real_A", "fake_B", "real_B"] and visuals["fake_B"].shape == (2, 3, 128, 128)


def pool_query(history, images, size):
    """Spec 3.7 written out: fill, then with p > 0.5 swap with a random stored image."""
    out = []
    for image in images:
        image = image.detach().unsqueeze(0)
        if len(history) < size:
            history.append(image)
            out.append(image)
        elif random.uniform(0, 1) > 0.5:
            slot = random.randint(0, size - 1)
            out.append(history[slot])
            history[slot] = image
        else:
            out.append(image)
    return torch.cat(out, 0)


@pytest.mark.parametrize("lambda_identity", [0.5, 0.0])
def test_cycle_gan_steps_equal_the_hand_written_step(tmp_path, lambda_identity):
    opt = make_opt(tmp_path, "cycle_gan", pool_size=2, lambda_identity=lambda_identity, lambda_A=10.0, lambda_B=5.0)
    model = built_model(opt, seed=4)

    torch.manual_seed(4)  # the reference's RNG order: build G_A, G_B, D_A, D_B, then init them in that order
    G_A, G_B = (reference_G(3, 3, 4, "resnet_6blocks", "instance", False) for _ in range(2))
    D_A, D_B = (reference_D(3, 4, "basic", 3, "instance") for _ in range(2))
    for net in (G_A, G_B, D_A, D_B):
        init_weights(net)
    for ours, theirs in ((model.netG_A, G_A), (model.netG_B, G_B), (model.netD_A, D_A), (model.netD_B, D_B)):
        assert_same_weights(ours, theirs)
    opt_G = adam(list(G_A.parameters()) + list(G_B.parameters()), opt)
    opt_D = adam(list(D_A.parameters()) + list(D_B.parameters()), opt)
    pool_A, pool_B = [], []

    for step, data in enumerate(make_batches(4, 1, 32)):  # 2 steps fill the pools, 2 draw from them
        random.seed(200 + step)
        model.set_input(data)
        model.optimize_parameters()
        got = model.get_current_losses()
        assert all(p.requires_grad for net in (model.netG_A, model.netG_B, model.netD_A, model.netD_B)
                   for p in net.parameters())

        random.seed(200 + step)
        real_A, real_B = data["A"], data["B"]
        fake_B = G_A(real_A)
        rec_A = G_B(fake_B)
        fake_A = G_B(real_B)
        rec_B = G_A(fake_A)
        freeze([D_A, D_B], False)
        opt_G.zero_grad()
        if lambda_identity > 0:
            loss_idt_A = l1(G_A(real_B), real_B) * 5.0 * lambda_identity
            loss_idt_B = l1(G_B(real_A), real_A) * 10.0 * lambda_identity
        else:
            loss_idt_A = loss_idt_B = torch.tensor(0.0)
        loss_G_A = mse_real(D_A(fake_B))
        loss_G_B = mse_real(D_B(fake_A))
        loss_cycle_A = l1(rec_A, real_A) * 10.0
        loss_cycle_B = l1(rec_B, real_B) * 5.0
        (loss_G_A + loss_G_B + loss_cycle_A + loss_cycle_B + loss_idt_A + loss_idt_B).backward()
        opt_G.step()
        freeze([D_A, D_B], True)
        opt_D.zero_grad()
        pooled_B = pool_query(pool_B, fake_B, 2)
        loss_D_A = 0.5 * (mse_real(D_A(real_B)) + mse_fake(D_A(pooled_B.detach())))
        loss_D_A.backward()
        pooled_A = pool_query(pool_A, fake_A, 2)
        loss_D_B = 0.5 * (mse_real(D_B(real_A)) + mse_fake(D_B(pooled_A.detach())))
        loss_D_B.backward()
        opt_D.step()
        assert_losses_close(got, {
            "D_A": loss_D_A.item(), "G_A": loss_G_A.item(), "cycle_A": loss_cycle_A.item(),
            "idt_A": loss_idt_A.item(), "D_B": loss_D_B.item(), "G_B": loss_G_B.item(),
            "cycle_B": loss_cycle_B.item(), "idt_B": loss_idt_B.item()})
    for ours, theirs in ((model.netG_A, G_A), (model.netG_B, G_B), (model.netD_A, D_A), (model.netD_B, D_B)):
        assert_same_weights(ours, theirs)
    expected_visuals = ["real_A", "fake_B", "rec_A", "real_B", "fake_A", "rec_B"]
    if lambda_identity > 0:
        expected_visuals = ["real_A", "fake_B", "rec_A", "idt_B", "real_B", "fake_A", "rec_B", "idt_A"]
    assert list(model.get_current_visuals()) == expected_visuals


def test_btoa_swaps_the_sides(tmp_path):
    model = create_model(make_opt(tmp_path, direction="BtoA"))
    data = make_batches(1, 1, 128)[0]
    model.set_input(data)
    assert model.real_A is data["B"] and model.real_B is data["A"] and model.image_paths == data["B_paths"]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no training step in this test
def test_setup_prints_parameter_counts_and_lr_steps_print_the_change(tmp_path, capsys):
    model = built_model(make_opt(tmp_path, n_epochs=1, n_epochs_decay=1))
    out = capsys.readouterr().out
    assert "model [Pix2PixModel] was created" in out and "initialize network with normal" in out
    assert "[Network G] Total number of parameters : 0.164 M" in out
    assert "[Network D] Total number of parameters : 0.012 M" in out
    model.update_learning_rate()
    assert "learning rate 0.0002000 -> 0.0001000" in capsys.readouterr().out
    assert [o.param_groups[0]["lr"] for o in model.optimizers] == [0.0001, 0.0001]


def test_save_and_load_round_trip(tmp_path):
    opt = make_opt(tmp_path, "cycle_gan")
    model = built_model(opt, seed=0)
    model.set_input(make_batches(1, 1, 32)[0])
    model.optimize_parameters()
    save_networks(model, "latest")
    save_networks(model, 3)
    names = sorted(p.name for p in (tmp_path / "exp").iterdir())
    assert names == sorted(f"{e}_net_{n}.pth" for e in ("latest", 3) for n in ("G_A", "G_B", "D_A", "D_B"))

    resumed = built_model(make_opt(tmp_path, "cycle_gan", continue_train=True, epoch=3), seed=1)
    for name in ("G_A", "G_B", "D_A", "D_B"):
        saved = getattr(model, "net" + name).state_dict()
        loaded = getattr(resumed, "net" + name).state_dict()
        assert list(saved) == list(loaded)
        assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_load_iter_picks_the_iter_prefix(tmp_path):
    model = built_model(make_opt(tmp_path))
    save_networks(model, "iter_40")
    built_model(make_opt(tmp_path, continue_train=True, load_iter=40))
    with pytest.raises(CheckpointError, match="latest_net_G.pth"):
        built_model(make_opt(tmp_path, continue_train=True))


@pytest.mark.parametrize("other", [dict(norm="instance"), dict(netG="resnet_6blocks"), dict(ngf=8)])
def test_loading_a_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, other):
    save_networks(built_model(make_opt(tmp_path)), "latest")
    with pytest.raises(CheckpointError, match="does not match the network built from the given flags"):
        built_model(make_opt(tmp_path, continue_train=True, **other))


def test_dropout_has_no_weights_so_no_dropout_still_loads(tmp_path):
    save_networks(built_model(make_opt(tmp_path, no_dropout=False)), "latest")
    built_model(make_opt(tmp_path, continue_train=True, no_dropout=True))


def test_training_state_round_trip_resumes_exactly(tmp_path):
    """Two steps and an epoch end, save, reload into a fresh model, one more step: as if never interrupted."""
    batches = make_batches(3, 1, 32)
    opt = make_opt(tmp_path, "cycle_gan", pool_size=1)

    def run(model, steps):
        losses = None
        for i in steps:
            random.seed(i)
            model.set_input(batches[i])
            model.optimize_parameters()
            losses = model.get_current_losses()
        return losses

    straight = built_model(opt)
    run(straight, range(2))
    straight.update_learning_rate()
    expected = run(straight, [2])

    first = built_model(opt)
    run(first, range(2))
    first.update_learning_rate()
    save_networks(first, "latest")
    torch.save(first.training_state(), tmp_path / "state.pt")

    resumed = built_model(make_opt(tmp_path, "cycle_gan", pool_size=1, continue_train=True), seed=9)
    resumed.load_training_state(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.fake_A_pool.num_imgs == 1
    assert resumed.schedulers[0].last_epoch == 1
    got = run(resumed, [2])
    assert got == pytest.approx(expected, rel=1e-6)

    with pytest.raises(CheckpointError, match="saved by another model"):
        built_model(make_opt(tmp_path / "p")).load_training_state(first.training_state())


def test_training_state_keeps_the_fp16_loss_scale(tmp_path):
    """The GradScaler's scale and growth tracker survive a save and load (a fresh scaler would restart at 2^16)."""
    saved = built_model(make_opt(tmp_path))
    saved.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    saved.grad_scaler.scale(torch.ones(()))  # the scale tensor is created on first use
    saved.grad_scaler.update(new_scale=1024.0)
    state = saved.training_state()
    assert state["grad_scaler"]["scale"] == 1024.0

    resumed = built_model(make_opt(tmp_path))
    resumed.grad_scaler = torch.amp.GradScaler("cpu")
    resumed.load_training_state(state)
    assert resumed.grad_scaler.get_scale() == 1024.0
    assert resumed.grad_scaler.state_dict() == state["grad_scaler"]

    unscaled = built_model(make_opt(tmp_path))  # bf16/fp32 run: nothing saved, and an fp16 state loads into it
    assert unscaled.training_state()["grad_scaler"] is None
    unscaled.load_training_state(state)


def test_test_model_runs_a_pix2pix_generator(tmp_path):
    trained = built_model(make_opt(tmp_path))
    save_networks(trained, "latest")
    model = built_model(make_opt(tmp_path, model="test", isTrain=False))
    assert model.model_names == ["G"]
    model.eval()
    trained.eval()
    x = make_batches(1, 1, 128)[0]["A"]
    model.set_input({"A": x, "A_paths": ["x.png"]})
    model.test()
    visuals = model.get_current_visuals()
    assert list(visuals) == ["real", "fake"]
    with torch.no_grad():
        torch.testing.assert_close(visuals["fake"], trained.netG(x))
    assert model.get_current_losses() == {}


def test_test_model_suffix_loads_one_cycle_gan_generator(tmp_path):
    save_networks(built_model(make_opt(tmp_path, "cycle_gan")), "latest")
    model = built_model(make_opt(tmp_path, model="test", isTrain=False, netG="resnet_6blocks", norm="instance",
                                 no_dropout=True, model_suffix="_A"))
    assert model.model_names == ["G_A"] and model.generator() is model.netG_A and not hasattr(model, "netG")


def test_test_model_rejects_other_dataset_modes_and_training(tmp_path):
    with pytest.raises(ValueError, match="needs --dataset_mode single, not 'aligned'"):
        create_model(make_opt(tmp_path, model="test", isTrain=False, dataset_mode="aligned"))
    with pytest.raises(ValueError, match="only runs inference"):
        create_model(make_opt(tmp_path, model="test"))


def test_pix2pix_inference_model_has_no_discriminator(tmp_path):
    model = create_model(make_opt(tmp_path, isTrain=False))
    assert model.model_names == ["G"] and not hasattr(model, "netD") and model.optimizers == []


def test_unknown_model(tmp_path):
    with pytest.raises(ValueError, match=r"unknown --model no_such_net: not a built-in \(pix2pix, cycle_gan, test"):
        create_model(make_opt(tmp_path, model="no_such_net"))


def test_identity_loss_needs_matching_channels(tmp_path):
    with pytest.raises(ValueError, match="use --lambda_identity 0"):
        create_model(make_opt(tmp_path, "cycle_gan", input_nc=1))
    create_model(make_opt(tmp_path, "cycle_gan", input_nc=1, lambda_identity=0.0))
