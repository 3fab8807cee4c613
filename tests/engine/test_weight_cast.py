"""--foreach_cast and --step_cast: the conv weights' low-precision copies give autocast's values and train like it."""

import copy

import pytest
import torch
from torch import nn

from fastp2p import networks
from fastp2p.engine.weight_cast import cast_conv_parameters_per_forward
from tests.engine.helpers import DEVICE, NETS, OFF, STEPS, assert_same_training, train_steps


def test_foreach_cast_gives_autocast_values_with_two_cast_kernels(monkeypatch):
    """Under autocast the conv weights are cast by one multi-tensor copy per forward and their gradients back by
    one: the output and, for one call, every gradient are autocast's own bits; the modules get their fp32
    Parameters back after the forward, also when it raises."""
    from torch.utils._python_dispatch import TorchDispatchMode

    torch.manual_seed(0)
    reference = NETS["resnet_6blocks_instance"]().to(DEVICE)
    networks.init_weights(reference, "normal", 0.02)
    parameter_shapes = {p.shape for p in reference.parameters()}  # activations are [1, C, H, W]: none of these

    class CastCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.casts = self.foreach = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            self.casts += name == "_to_copy" and args[0].shape in parameter_shapes
            self.foreach += name == "_foreach_copy_"
            return func(*args, **(kwargs or {}))

    net = copy.deepcopy(reference)
    assert cast_conv_parameters_per_forward(net, DEVICE.type) == 2 * 18  # 18 convs, biased under InstanceNorm
    x = torch.randn(1, 3, 32, 32, device=DEVICE)
    runs = {}
    for name, model in (("autocast", reference), ("foreach", net)):
        counter = CastCounter()
        with counter, torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            out = model(x)
            out.float().square().mean().backward()
        runs[name] = out, {key: p.grad for key, p in model.named_parameters()}, counter
    (out_ref, grads_ref, autocast_counts), (out, grads, counts) = runs["autocast"], runs["foreach"]
    assert autocast_counts.casts >= 2 * 36 and counts.casts == 0 and counts.foreach == 2
    assert torch.equal(out, out_ref)
    for key, grad in grads.items():
        assert grad.dtype == torch.float32 and torch.equal(grad, grads_ref[key]), key
    assert all(type(p) is nn.Parameter and p.dtype == torch.float32 for p in net.parameters())
    monkeypatch.setattr(net.model[1], "forward", lambda x: 1 / 0)
    with pytest.raises(ZeroDivisionError), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        net(x)
    assert all(type(p) is nn.Parameter and p.dtype == torch.float32 for p in net.parameters())


@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
def test_step_written_copies_train_bit_for_bit_like_per_forward_casts(model_name, monkeypatch):
    """--step_cast reads, in every forward, the copies that the last optimizer step wrote: the same bits that
    --foreach_cast casts in each forward, so the two train identically, loss by loss and weight by weight (a copy
    left stale by a step would part them from the second step on). Its forwards cast no weight."""
    from fastp2p.engine import weight_cast

    forward_casts = []
    cast = weight_cast.CastParameters.apply
    monkeypatch.setattr(weight_cast.CastParameters, "apply", lambda *args: forward_casts.append(1) or cast(*args))
    per_step = train_steps(model_name, OFF + ["--amp", "bf16", "--step_cast", "on"], STEPS)
    assert forward_casts == []
    per_forward = train_steps(model_name, OFF + ["--amp", "bf16", "--foreach_cast", "on"], STEPS)
    assert len(forward_casts) >= STEPS
    assert_same_training(per_step, per_forward, 0, 0, 0)


def test_step_copies_follow_each_optimizer_step_and_ddp_style_writes():
    """The copies equal the rounded fp32 weights after every step of the optimizer that owns them, not after
    another optimizer's, and after refresh() (what the engine calls once DDP has broadcast the weights)."""
    from fastp2p.engine.weight_cast import StepCopies

    torch.manual_seed(0)
    net, other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4)), nn.Conv2d(3, 4, 3)
    copies = StepCopies(net, "cpu", torch.bfloat16)
    optimizers = [torch.optim.Adam(net.parameters(), lr=0.1), torch.optim.Adam(other.parameters(), lr=0.1)]
    copies.refresh_after_steps_of(optimizers)
    weight = net[0].weight

    def in_step():
        return torch.equal(copies.copies[0], weight.detach().to(torch.bfloat16))

    assert in_step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(torch.randn(1, 3, 8, 8)).float().sum().backward()
    assert weight.grad.dtype == torch.float32 and weight.grad.abs().sum() > 0
    optimizers[0].step()
    assert in_step()
    with torch.no_grad():
        weight.add_(1.0)  # as DDP's broadcast writes the parameters
    assert not in_step()
    other(torch.randn(1, 3, 8, 8)).sum().backward()
    optimizers[1].step()
    assert not in_step()
    copies.refresh()
    assert in_step()


def test_step_copies_keep_every_stride_of_channels_last_weights():
    """A PatchGAN's last conv has one output channel: its channels-last weight's stride on that size-1 dimension is
    one a re-derived view would renormalize, and CPU convolutions then refuse the gradient. The copies handed to
    the forward keep the weights' strides, and the gradients are --foreach_cast's."""
    from fastp2p.engine.weight_cast import StepCopies

    grads = []
    for use_step_copies in (False, True):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(16, 1, 4)).to(memory_format=torch.channels_last)
        if use_step_copies:
            StepCopies(net, "cpu", torch.bfloat16)
        else:
            cast_conv_parameters_per_forward(net, "cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            net(torch.randn(1, 16, 8, 8).to(memory_format=torch.channels_last)).float().sum().backward()
        grads.append(net[0].weight.grad)
    assert torch.equal(*grads)


