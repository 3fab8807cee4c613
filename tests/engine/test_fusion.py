"""--fused_kernels' converters: fused networks against the reference layers (forward, backward, keys), the conv
biases InstanceNorm cancels, the pads, skips and hand-offs the norms take over."""

import copy

import pytest
import torch
from torch import nn

from fastp2p import networks
from fastp2p.engine.conv_fusion import (Conv2dBeforeInstanceNorm, ConvTranspose2dBeforeInstanceNorm,
                                        drop_cancelled_conv_biases)
from fastp2p.engine.fused_blocks import HandOffSequential, run_layers
from fastp2p.engine.fusion import fuse_network
from fastp2p.models.base_model import BaseModel
from tests.engine.helpers import DEVICE, NETS, assert_close


@pytest.mark.parametrize("name", sorted(NETS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_fused_network_matches_reference_forward_backward_and_keys(name, channels_last):
    torch.manual_seed(0)
    reference = NETS[name]().to(DEVICE)
    networks.init_weights(reference, "normal", 0.02)
    fused = copy.deepcopy(reference)
    assert fuse_network(fused) > 0
    assert not any(type(m) in (nn.ReflectionPad2d, nn.InstanceNorm2d, nn.BatchNorm2d) for m in fused.modules())
    assert list(fused.state_dict()) == list(reference.state_dict())
    size = 128 if name.startswith("unet_128") else 32
    x = torch.randn(2, 6 if "_D_" in name else 3, size, size, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        fused.to(memory_format=torch.channels_last)
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_fused = reference(x_ref), fused(x_fused)
    assert_close(out_fused, out_ref, 1e-4, 1e-4, "output")
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)
    out_fused.backward(grad)
    # gradients sum many terms in another order: absolute tolerance relative to the net's gradient scale
    # (a conv bias before InstanceNorm has a true gradient of 0, so both sides hold rounding noise)
    assert_close(x_fused.grad, x_ref.grad, 1e-3, 1e-5 * x_ref.grad.abs().max(), "input grad")
    params_ref = dict(reference.named_parameters())
    scale = max(p.grad.abs().max() for p in params_ref.values())
    for key, param in fused.named_parameters():
        if param.requires_grad:  # the others are the conv biases InstanceNorm cancels, frozen (tested below)
            assert_close(param.grad, params_ref[key].grad, 1e-3, 1e-5 * scale, f"grad of {key}")
    buffers_ref = dict(reference.named_buffers())
    for key, buffer in fused.state_dict().items():
        if key in buffers_ref:
            assert_close(buffer, buffers_ref[key], 1e-4, 1e-5, key)


@pytest.mark.parametrize("name, expected", [("resnet_6blocks_instance", 17), ("unet_128_instance", 11),
                                            ("unet_128_batch", 0)])
def test_conv_biases_cancelled_by_instance_norm_are_frozen(name, expected):
    """Each biased conv (or ConvT) right before an InstanceNorm runs without its bias, whose true gradient is 0
    (the reference's is rounding noise): the bias is frozen, gets no gradient even when a D step turns
    requires_grad back on, and Adam leaves its value alone; outputs stay the same."""
    torch.manual_seed(0)
    reference = NETS[name]().to(DEVICE)
    networks.init_weights(reference, "normal", 0.02)
    with torch.no_grad():  # non-zero biases: dropping them must still leave the outputs unchanged
        for module in reference.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and module.bias is not None:
                module.bias.uniform_(-1, 1)
    fused = copy.deepcopy(reference)
    assert drop_cancelled_conv_biases(fused) == expected
    bias_free = (Conv2dBeforeInstanceNorm, ConvTranspose2dBeforeInstanceNorm)
    cancelled = [m for m in fused.modules() if isinstance(m, bias_free)]
    assert len(cancelled) == expected and list(fused.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 128 if name.startswith("unet") else 32, 128 if name.startswith("unet") else 32)
    out, out_ref = fused(x.to(DEVICE)), reference(x.to(DEVICE))
    assert_close(out, out_ref, 1e-4, 1e-4, "output")
    assert not any(m.bias.requires_grad for m in cancelled)
    before = [m.bias.detach().clone() for m in cancelled]
    optimizer = torch.optim.Adam(fused.parameters(), lr=0.1)
    out.square().mean().backward()
    optimizer.step()
    BaseModel.set_requires_grad(fused, True)  # as each D step leaves a discriminator
    fused(x.to(DEVICE)).square().mean().backward()
    optimizer.step()
    for module, value in zip(cancelled, before):
        assert module.bias.grad is None and torch.equal(module.bias, value)
    assert all(p.grad.abs().sum() > 0 for n, p in fused.named_parameters() if n.endswith("weight"))


def test_fused_unet_dropout_layers_are_absorbed_and_eval_matches():
    torch.manual_seed(0)
    reference = networks.define_G(3, 3, 2, "unet_128", "batch", use_dropout=True).to(DEVICE)
    networks.init_weights(reference)
    fused = copy.deepcopy(reference)
    fuse_network(fused)
    assert not any(isinstance(m, torch.nn.Dropout) for m in fused.modules())
    assert sum(getattr(m, "dropout", 0.0) == 0.5 for m in fused.modules()) == 2  # unet_128: 2 dropout blocks
    reference.eval()
    fused.eval()
    x = torch.randn(1, 3, 128, 128, device=DEVICE)
    assert_close(fused(x), reference(x), 1e-4, 1e-4, "eval output")


@pytest.mark.parametrize("use_dropout", [False, True], ids=["no_dropout", "dropout"])
def test_resnet_pads_and_skips_are_written_by_the_norms(use_dropout, monkeypatch):
    """resnet_6blocks has 14 pads. Each block's second pad and the output layer's follow a (norm, ReLU[, Dropout])
    and are written by it. Each block takes, instead of its first pad, the padded output that the norm before the
    block returns besides its plain output (the skip), and each block's last norm adds the skip. So one pad kernel
    runs per forward, on the input image."""
    from fastp2p.engine.fused_blocks import FusedResnetBlock
    from fastp2p.kernels import FusedNormAct, pad

    torch.manual_seed(0)
    reference = networks.define_G(3, 3, 4, "resnet_6blocks", "instance", use_dropout=use_dropout).to(DEVICE)
    fused = copy.deepcopy(reference)
    fuse_network(fused)
    norms = [m for m in fused.modules() if isinstance(m, FusedNormAct)]
    assert [m.padding for m in norms if m.padding is not None and not m.keep_unpadded] == [(1, 1, 1, 1)] * 6 + [
        (3, 3, 3, 3)]
    assert sum(m.keep_unpadded for m in norms) == 6  # the downsampling's last norm and blocks 1-5's last norms
    assert sum(isinstance(m, FusedResnetBlock) for m in fused.modules()) == 6
    assert list(fused.state_dict()) == list(reference.state_dict())
    pads, pad_apply = [], pad.ReflectionPadFunction.apply
    monkeypatch.setattr(pad.ReflectionPadFunction, "apply", lambda *args: pads.append(args) or pad_apply(*args))
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    assert_close(fused.eval()(x), reference.eval()(x), 1e-4, 1e-4, "eval output")
    assert len(pads) == 1 and pads[0][0] is x


def test_unet_skips_are_written_by_the_norms(monkeypatch):
    """unet_128 has 7 levels. Below the outermost two, each level's skip concatenation, with the ReLU its outer
    level applies to it, is written by the outer level's down norm and the level's own last norm: 5 levels, so
    one torch.cat runs per forward (the second level's) and two ReLUs (the outermost's, and the innermost's
    after its norm-less down conv)."""
    from fastp2p.engine.fused_blocks import FusedUnetSkipBlock

    torch.manual_seed(0)
    reference = networks.define_G(3, 3, 2, "unet_128", "batch", use_dropout=True).to(DEVICE)
    networks.init_weights(reference, "normal", 0.02)
    fused = copy.deepcopy(reference)
    fuse_network(fused)
    assert sum(isinstance(m, FusedUnetSkipBlock) for m in fused.modules()) == 5
    assert sum(type(m) is nn.ReLU for m in fused.modules()) == 2
    assert list(fused.state_dict()) == list(reference.state_dict())
    cats, cat = [], torch.cat
    monkeypatch.setattr(torch, "cat", lambda *args, **kwargs: cats.append(1) or cat(*args, **kwargs))
    x = torch.randn(1, 3, 128, 128, device=DEVICE)
    out = fused.eval()(x)
    assert len(cats) == 1
    assert_close(out, reference.eval()(x), 1e-4, 1e-4, "eval output")


@pytest.mark.parametrize("name", ["resnet_6blocks_instance", "unet_128_batch"])
def test_fused_layers_are_new_modules_and_hand_offs_are_forward_arguments(name):
    """The converters leave the modules they replace as they were (no class changed in place) and every tensor a
    layer hands to the next travels as a forward argument: no layer output carries a Python attribute."""
    torch.manual_seed(0)
    fused = NETS[name]().to(DEVICE)
    originals = {id(m): type(m) for m in fused.modules()}
    replaced = list(fused.modules())
    fuse_network(fused)
    assert all(type(m) is originals[id(m)] for m in replaced), "a converter changed a module's class in place"
    assert sum(isinstance(m, HandOffSequential) for m in fused.modules()) > 0
    carried = []
    for module in fused.modules():
        module.register_forward_hook(lambda m, args, out: carried.extend(
            (type(m).__name__, vars(t)) for t in (out if isinstance(out, tuple) else (out,)) if vars(t)))
    size = 128 if name.startswith("unet") else 32
    fused(torch.randn(1, 3, size, size, device=DEVICE)).sum().backward()
    assert carried == []


class ReturnsPair(nn.Module):
    def forward(self, x):
        return x, x + 1


class TakesPair(nn.Module):
    def forward(self, x, hand_off):
        return x + 2 * hand_off


def test_a_hand_off_goes_to_the_next_layer_and_one_that_no_layer_takes_is_an_error():
    assert run_layers([ReturnsPair(), nn.Identity(), TakesPair()], torch.zeros(1)).item() == 2
    with pytest.raises(RuntimeError, match="hand-off that no layer takes"):
        run_layers([ReturnsPair(), nn.Identity()], torch.zeros(1))


