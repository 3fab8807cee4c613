"""Networks against the reference trainer's parameter counts and checkpoint keys, and tests/reference_networks.py."""

import itertools
import types

import pytest
import torch
from torch import nn

from fastp2p import networks
from fastp2p.networks import count_parameters, define_D, define_G, init_weights
from tests.reference_networks import reference_D, reference_G

NORMS = ("batch", "instance", "none", "syncbatch")


def on_meta(build, *args):
    """Full-size nets on the meta device: shapes and keys without allocating or initializing 54M weights."""
    with torch.device("meta"):
        return build(*args)


# the reference trainer's networks' parameter counts (as its print_networks reports them), ngf = ndf = 64, RGB
PARAMETER_COUNTS = [
    (define_G, (3, 3, 64, "unet_256", "batch", True), 54_413_955),
    (define_G, (3, 3, 64, "unet_256", "instance", True), 54_409_603),
    (define_G, (3, 3, 64, "unet_128", "batch", True), 41_828_995),
    (define_G, (3, 3, 64, "unet_128", "instance", True), 41_825_667),
    (define_G, (3, 3, 64, "resnet_9blocks", "batch", False), 11_383_427),
    (define_G, (3, 3, 64, "resnet_9blocks", "instance", False), 11_378_179),
    (define_G, (3, 3, 64, "resnet_6blocks", "batch", False), 7_841_411),
    (define_G, (3, 3, 64, "resnet_6blocks", "instance", False), 7_837_699),
    (define_D, (6, 64, "basic", 3, "batch"), 2_768_705),
    (define_D, (6, 64, "basic", 3, "instance"), 2_767_809),
    (define_D, (3, 64, "basic", 3, "batch"), 2_765_633),
    (define_D, (3, 64, "basic", 3, "instance"), 2_764_737),
    (define_D, (6, 64, "pixel", 3, "batch"), 9_024),
    (define_D, (6, 64, "pixel", 3, "instance"), 8_897),
    (define_D, (6, 64, "n_layers", 5, "batch"), 11_159_361),
    (define_D, (6, 64, "n_layers", 5, "instance"), 11_157_441),
]


@pytest.mark.parametrize("build, args, expected", PARAMETER_COUNTS, ids=[str(a) for _, a, _ in PARAMETER_COUNTS])
def test_parameter_counts_match_spec_table(build, args, expected):
    assert count_parameters(on_meta(build, *args)) == expected


def test_dropout_and_norm_do_not_change_counts_as_the_reference_logs():
    assert f"{count_parameters(on_meta(define_G, 3, 3, 64, 'unet_256', 'batch', True)) / 1e6:.3f}" == "54.414"
    assert count_parameters(on_meta(define_G, 3, 3, 64, "unet_256", "batch", False)) == 54_413_955
    assert count_parameters(on_meta(define_G, 3, 3, 64, "unet_256", "syncbatch", True)) == 54_413_955


def shapes(net):
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_unet_256_batch_keys_from_spec_section_4():
    sd = shapes(on_meta(define_G, 3, 3, 64, "unet_256", "batch", True))
    assert len(sd) == 82
    deep = "model.model.1.model.3.model.3.model.3.model.3."
    expected = {
        "model.model.0.weight": (64, 3, 4, 4),
        "model.model.1.model.1.weight": (128, 64, 4, 4),
        "model.model.1.model.2.num_batches_tracked": (),
        "model.model.1.model.3.model.1.weight": (256, 128, 4, 4),
        deep + "model.3.model.1.weight": (512, 512, 4, 4),
        # the innermost level is the 8th (depth 7): six ".model.3" below model.model.1, easy to count one short
        deep + "model.3.model.3.model.1.weight": (512, 512, 4, 4),
        deep + "model.3.model.3.model.3.weight": (512, 512, 4, 4),
        deep + "model.3.model.3.model.4.running_var": (512,),
        deep + "model.5.weight": (1024, 512, 4, 4),
        deep + "model.6.weight": (512,),
        "model.model.1.model.5.weight": (256, 64, 4, 4),
        "model.model.1.model.6.running_mean": (64,),
        "model.model.3.weight": (128, 3, 4, 4),
        "model.model.3.bias": (3,),
    }
    for key, shape in expected.items():
        assert sd[key] == shape, key
    assert "model.model.0.bias" not in sd  # no bias on a conv followed by BatchNorm
    unet = on_meta(define_G, 3, 3, 64, "unet_256", "batch", True)
    assert isinstance(unet.model.model[1].model[3].model[3].model[3].model[3].model[7], nn.Dropout)


def test_unet_256_instance_has_32_entries():
    sd = shapes(on_meta(define_G, 3, 3, 64, "unet_256", "instance", True))
    assert len(sd) == 32
    assert sd["model.model.0.bias"] == (64,)


def test_resnet_9blocks_keys_from_spec_section_4():
    sd = shapes(on_meta(define_G, 3, 3, 64, "resnet_9blocks", "instance", False))
    expected = {"model.1.weight": (64, 3, 7, 7), "model.1.bias": (64,), "model.4.weight": (128, 64, 3, 3),
                "model.4.bias": (128,), "model.7.weight": (256, 128, 3, 3), "model.7.bias": (256,),
                "model.19.weight": (256, 128, 3, 3), "model.19.bias": (128,), "model.22.weight": (128, 64, 3, 3),
                "model.22.bias": (64,), "model.26.weight": (3, 64, 7, 7), "model.26.bias": (3,)}
    for i in range(10, 19):
        for conv in (1, 5):
            expected[f"model.{i}.conv_block.{conv}.weight"] = (256, 256, 3, 3)
            expected[f"model.{i}.conv_block.{conv}.bias"] = (256,)
    assert sd == expected  # exactly these 48 entries
    batch = shapes(on_meta(define_G, 3, 3, 64, "resnet_9blocks", "batch", False))
    assert len(batch) == 140
    for key in ("model.2.running_mean", "model.10.conv_block.2.weight", "model.10.conv_block.6.bias",
                "model.20.num_batches_tracked", "model.23.weight"):
        assert key in batch
    assert "model.1.bias" not in batch


def test_basic_discriminator_keys_from_spec_section_4():
    sd = shapes(on_meta(define_D, 6, 64, "basic", 3, "batch"))
    assert len(sd) == 22
    assert sd["model.0.weight"] == (64, 6, 4, 4) and sd["model.8.weight"] == (512, 256, 4, 4)
    assert sd["model.11.weight"] == (1, 512, 4, 4) and "model.11.bias" in sd
    assert set(shapes(on_meta(define_D, 3, 64, "basic", 3, "instance"))) == {
        f"model.{i}.{p}" for i in (0, 2, 5, 8, 11) for p in ("weight", "bias")}


GENERATOR_CASES = list(itertools.product(networks.GENERATORS, NORMS, (False, True)))
DISCRIMINATOR_CASES = [("basic", 3), ("n_layers", 2), ("n_layers", 5), ("pixel", 3)]


def reference_norm(norm):
    return "batch" if norm == "syncbatch" else norm


@pytest.mark.parametrize("netG, norm, dropout", GENERATOR_CASES)
def test_generator_keys_and_shapes_match_the_restatement(netG, norm, dropout):
    ours = on_meta(define_G, 3, 2, 8, netG, norm, dropout)
    theirs = on_meta(reference_G, 3, 2, 8, netG, reference_norm(norm), dropout)
    assert list(shapes(ours).items()) == list(shapes(theirs).items())


@pytest.mark.parametrize("netD, n_layers", DISCRIMINATOR_CASES)
@pytest.mark.parametrize("norm", NORMS)
def test_discriminator_keys_and_shapes_match_the_restatement(netD, n_layers, norm):
    ours = on_meta(define_D, 5, 8, netD, n_layers, norm)
    theirs = on_meta(reference_D, 5, 8, netD, n_layers, reference_norm(norm))
    assert list(shapes(ours).items()) == list(shapes(theirs).items())


def test_norm_none_drops_conv_bias_although_no_norm_follows():
    g = define_G(3, 3, 8, "resnet_6blocks", "none")
    assert g.model[1].bias is None and isinstance(g.model[2], nn.Identity)
    assert g.model[-2].bias is not None  # the last conv has no norm after it: bias as always
    d = define_D(6, 8, "basic", 3, "none")
    assert d.model[2].bias is None and d.model[0].bias is not None


def randomize(net, seed):
    """Random weights and BatchNorm running stats, so eval-mode comparisons exercise every buffer."""
    torch.manual_seed(seed)
    init_weights(net, "normal", 0.5)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return net


def assert_same_outputs_and_grads(ours, theirs, x):
    ours.load_state_dict(theirs.state_dict())
    for train in (True, False):
        ours.train(train)
        theirs.train(train)
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        torch.manual_seed(1)
        out_theirs = theirs(xs[0])
        torch.manual_seed(1)
        out_ours = ours(xs[1])
        torch.testing.assert_close(out_ours, out_theirs, rtol=0, atol=0)
        if train:
            out_theirs.square().sum().backward()
            out_ours.square().sum().backward()
            torch.testing.assert_close(xs[1].grad, xs[0].grad, rtol=1e-6, atol=1e-6)
            grads = {n: p.grad for n, p in theirs.named_parameters()}
            for n, p in ours.named_parameters():
                torch.testing.assert_close(p.grad, grads[n], rtol=1e-6, atol=1e-6, msg=n)
    return out_ours


EQUALITY_G = [
    ("unet_256", "batch", True, 4, 256),
    ("unet_256", "instance", False, 4, 256),
    ("unet_128", "none", True, 4, 128),
    ("unet_128", "syncbatch", False, 4, 128),
    ("resnet_6blocks", "instance", False, 8, 64),
    ("resnet_9blocks", "batch", True, 4, 32),
]


@pytest.mark.parametrize("netG, norm, dropout, ngf, size", EQUALITY_G)
def test_generator_outputs_equal_the_restatement(netG, norm, dropout, ngf, size):
    theirs = randomize(reference_G(3, 2, ngf, netG, reference_norm(norm), dropout), seed=0)
    ours = define_G(3, 2, ngf, netG, norm, dropout)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    out = assert_same_outputs_and_grads(ours, theirs, x)
    assert out.shape == (2, 2, size, size)
    assert out.abs().max() <= 1  # tanh


@pytest.mark.parametrize("netD, n_layers, size, out_size", [
    ("basic", 3, 64, 6), ("n_layers", 5, 128, 2), ("n_layers", 1, 16, 6), ("pixel", 3, 20, 20)])
@pytest.mark.parametrize("norm", ("batch", "instance", "none"))
def test_discriminator_outputs_equal_the_restatement(netD, n_layers, size, out_size, norm):
    theirs = randomize(reference_D(6, 4, netD, n_layers, norm), seed=0)
    ours = define_D(6, 4, netD, n_layers, norm)
    x = torch.randn(2, 6, size, size, generator=torch.Generator().manual_seed(3))
    out = assert_same_outputs_and_grads(ours, theirs, x)
    assert out.shape == (2, 1, out_size, out_size)


def test_basic_discriminator_sees_30x30_patches_of_a_256_image():
    d = define_D(6, 4, "basic", 3, "batch")
    assert d(torch.zeros(1, 6, 256, 256)).shape == (1, 1, 30, 30)


def test_grayscale_generators():
    for netG, size in (("unet_128", 128), ("resnet_6blocks", 32)):
        g = define_G(1, 1, 4, netG, "instance")
        assert g(torch.zeros(1, 1, size, size)).shape == (1, 1, size, size)


def test_init_draws_in_the_reference_module_order():
    """Same seed, same weights in both: the post-order module walk matches the reference layout."""
    pairs = [(define_G(3, 3, 4, "unet_128", "batch", True), reference_G(3, 3, 4, "unet_128", "batch", True)),
             (define_D(6, 4, "basic", 3, "batch"), reference_D(6, 4, "basic", 3, "batch"))]
    for ours, theirs in pairs:
        torch.manual_seed(7)
        init_weights(ours)
        torch.manual_seed(7)
        init_weights(theirs)
        for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            assert torch.equal(a, b), k


@pytest.mark.parametrize("init_type", networks.INIT_TYPES)
def test_init_types(init_type):
    torch.manual_seed(0)
    d = init_weights(define_D(6, 16, "basic", 3, "batch"), init_type, 0.02)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None or torch.count_nonzero(m.bias) == 0 for m in convs)
    bn = d.model[3]
    assert torch.count_nonzero(bn.bias) == 0 and abs(bn.weight.mean().item() - 1.0) < 0.01
    if init_type == "normal":
        assert abs(convs[1].weight.std().item() - 0.02) < 0.002


def test_init_leaves_syncbatchnorm_alone_like_the_reference():
    d = init_weights(define_D(6, 8, "basic", 3, "syncbatch"))
    assert torch.equal(d.model[3].weight, torch.ones(16))


@pytest.mark.parametrize("call, message", [
    (lambda: define_G(3, 3, 8, "unet_512", "batch"), "netG 'unet_512'; choose one of: resnet_9blocks"),
    (lambda: define_D(3, 8, "patch", 3, "batch"), "netD 'patch'; choose one of: basic, n_layers, pixel"),
    (lambda: define_G(3, 3, 8, "unet_128", "group"), "norm 'group'; choose one of: batch, instance, none"),
    (lambda: init_weights(nn.Conv2d(1, 1, 1), "uniform"), "init_type 'uniform'"),
])
def test_unknown_names_list_the_choices(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def output_size(net, height, width):
    """The spatial size of net's output on one height x width image, or None where the forward fails."""
    try:
        return tuple(net(torch.randn(1, 3, height, width)).shape[-2:])
    except (RuntimeError, ValueError):  # what convs, norms, pads and torch.cat raise on sizes they cannot take
        return None


@pytest.mark.parametrize("netG, sizes", [
    ("resnet_6blocks", [4, 6, 8, 10, 12, 30, 32]),
    ("unet_128", [64, 96, 127, 128, 192, 256]),
])
def test_image_size_problem_matches_what_the_generator_takes(netG, sizes):
    opt = types.SimpleNamespace(netG=netG, netD="basic", n_layers_D=3)
    G = define_G(3, 3, 4, netG, "batch").train()
    width = 128 if netG == "unet_128" else 32
    for height in sizes:
        problem = networks.image_size_problem(opt, height, width, discriminator=False)
        assert (output_size(G, height, width) == (height, width)) == (problem is None), (height, problem)


@pytest.mark.parametrize("netD, n_layers", [("basic", 3), ("n_layers", 2), ("n_layers", 4)])
def test_image_size_problem_matches_what_the_discriminator_takes(netD, n_layers):
    opt = types.SimpleNamespace(netG="resnet_6blocks", netD=netD, n_layers_D=n_layers)
    D = define_D(3, 4, netD, n_layers, "batch").train()
    for size in range(8, 84, 4):  # multiples of 4, so only the discriminator can object
        problem = networks.image_size_problem(opt, size, size, discriminator=True)
        assert (output_size(D, size, size) is not None) == (problem is None), (size, problem)
