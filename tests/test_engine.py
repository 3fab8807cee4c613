"""Every fast path of the engine against the plain reference path: layers, losses, whole training steps.

On the CPU this covers fused kernels (Triton interpreter), channels-last, fused Adam, bf16 autocast, fp16
autocast with its GradScaler and torch.compile; on a GPU also CUDA graphs. Training runs compare each step's
losses and the final weights with the reference run from the same seed and the same batches.
"""

import contextlib
import copy
import dataclasses

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch._dynamo.utils import counters as dynamo_counters

from fastp2p import distributed, networks
from fastp2p.checkpoint import unwrap
from fastp2p.engine import prepare_model, resolve_engine
from fastp2p.engine.cuda_graph import DDP_WARMUP_STEPS, DeviceImagePool
from fastp2p.engine.fusion import (Conv2dBeforeInstanceNorm, ConvTranspose2dBeforeInstanceNorm, HandOffSequential,
                                   drop_cancelled_conv_biases, fuse_network, run_layers)
from fastp2p.engine.weight_cast import cast_conv_parameters_per_forward
from fastp2p.errors import OptionError
from fastp2p.image_pool import ImagePool
from fastp2p.models import create_model
from fastp2p.models.base_model import BaseModel
from fastp2p.options import parse_options
from tests.conftest import requires_cuda

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
OFF = ["--amp", "off", "--channels_last", "off", "--fused_kernels", "off", "--fused_adam", "off",
       "--foreach_cast", "off", "--step_cast", "off", "--overlap_optimizer", "off", "--batch_passes", "off",
       "--cuda_graph", "off"]


@pytest.fixture(autouse=True, scope="module")
def full_fp32_convolutions():
    """cuDNN runs fp32 convolutions in TF32 by default; the fp32 comparisons here need true fp32.
    Module scope, so that it is in force before the module-scoped reference runs are made."""
    previous = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = previous


def assert_close(actual, expected, rtol, atol, what):
    if not torch.allclose(actual.float(), expected.float(), rtol=rtol, atol=atol):
        diff = (actual.float() - expected.float()).abs()
        worst = torch.topk(diff.flatten(), min(5, diff.numel()))
        raise AssertionError(f"{what}: max |diff| {diff.max():.3g} (rtol {rtol}, atol {atol}); worst at flat "
                             f"indices {worst.indices.tolist()}: {actual.flatten()[worst.indices].tolist()} vs "
                             f"{expected.flatten()[worst.indices].tolist()}")


NETS = {
    "unet_128_batch": lambda: networks.define_G(3, 3, 2, "unet_128", "batch", use_dropout=False),
    "unet_128_instance": lambda: networks.define_G(3, 3, 2, "unet_128", "instance", use_dropout=False),
    "resnet_6blocks_instance": lambda: networks.define_G(3, 3, 4, "resnet_6blocks", "instance"),
    "basic_D_batch": lambda: networks.define_D(6, 4, "basic", 3, "batch"),
    "pixel_D_batch": lambda: networks.define_D(6, 4, "pixel", 3, "batch"),
}


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
    from fastp2p.engine.fusion import FusedResnetBlock
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
    from fastp2p.engine.fusion import FusedUnetSkipBlock

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


def make_opt(model, *flags):
    common = ["--gpu_ids", "0" if DEVICE.type == "cuda" else "-1", "--ngf", "4", "--ndf", "4",
              "--netG", "resnet_6blocks", "--load_size", "32", "--crop_size", "32", "--seed", "0",
              "--no_tensorboard", "--checkpoints_dir", "/nonexistent"]
    if model == "pix2pix":
        common += ["--model", "pix2pix", "--no_dropout"]
    else:
        common += ["--model", "cycle_gan", "--pool_size", "2"]
    opt = parse_options(common + list(flags))
    opt.device = DEVICE
    return opt


def train_steps(model_name, flags, steps, batch_size=2, image_size=32, **config_changes):
    """Per-step losses and final weights of a run from seed 0 on fixed random batches of image_size pixels a side;
    ``config_changes`` replace fields of the EngineConfig the flags resolve to."""
    opt = make_opt(model_name, *flags, "--batch_size", str(batch_size))
    torch.manual_seed(0)
    import random
    random.seed(0)
    model = create_model(opt)
    model.setup(opt)
    train_step = prepare_model(model, dataclasses.replace(resolve_engine(opt, DEVICE), **config_changes))
    gen = torch.Generator().manual_seed(1)
    history = []
    for _ in range(steps):
        batch = {"A": torch.rand(batch_size, 3, image_size, image_size, generator=gen) * 2 - 1,
                 "B": torch.rand(batch_size, 3, image_size, image_size, generator=gen) * 2 - 1,
                 "A_paths": ["a"] * batch_size, "B_paths": ["b"] * batch_size}
        model.set_input(batch)
        train_step()
        history.append(model.get_current_losses())
    weights = {name: {k: v.detach().float().cpu() for k, v in unwrap(net).state_dict().items()}
               for name, net in model.networks()}
    ignored = {name: bias_before_instance_norm(net) for name, net in model.networks()}
    return history, weights, ignored


def bias_before_instance_norm(net):
    """Conv biases that InstanceNorm cancels: their true gradient is 0, so Adam steps them by the sign of
    rounding noise, differently in any two runs, without any effect on the outputs."""
    names = []
    for prefix, module in net.named_modules():
        if isinstance(module, torch.nn.Sequential):
            for i in range(len(module) - 1):
                if getattr(module[i], "bias", None) is not None and isinstance(module[i + 1], torch.nn.InstanceNorm2d):
                    names.append(f"{prefix}.{i}.bias".lstrip("."))
    return names


def assert_same_training(run, reference, loss_rtol, loss_atol, weight_atol):
    (history, weights, _), (history_ref, weights_ref, ignored) = run, reference
    for step, (losses, losses_ref) in enumerate(zip(history, history_ref)):
        for name in losses_ref:
            actual, expected = torch.tensor(losses[name]), torch.tensor(losses_ref[name])
            assert_close(actual, expected, loss_rtol, loss_atol, f"step {step} loss {name}")
    for net in weights_ref:
        for key in weights_ref[net]:
            if key in ignored[net]:
                continue
            assert_close(weights[net][key], weights_ref[net][key], 0, weight_atol, f"{net}.{key}")


CPU_PATHS = {
    # name: (flags on top of OFF, loss rtol, loss atol, weight atol). Weight atol 5e-5 = a quarter of one
    # Adam step (lr 2e-4): other cuDNN algorithms (NHWC) sum in another order, and Adam moves an element
    # whose gradient is at rounding level by up to lr; a wrong gradient moves most elements by ~lr a step.
    "channels_last": (["--channels_last", "on"], 1e-4, 1e-5, 5e-5),
    "fused_adam": (["--fused_adam", "on"], 1e-4, 1e-5, 5e-5),
    "fused_kernels": (["--fused_kernels", "on"], 1e-3, 1e-4, 1e-4),
    "batch_passes": (["--batch_passes", "on"], 1e-4, 1e-5, 5e-5),  # CycleGAN only: pix2pix here has BatchNorm
    "bf16": (["--amp", "bf16"], 5e-2, 5e-2, 5e-3),
    "bf16_foreach_cast": (["--amp", "bf16", "--foreach_cast", "on"], 5e-2, 5e-2, 5e-3),
    "bf16_step_cast": (["--amp", "bf16", "--step_cast", "on"], 5e-2, 5e-2, 5e-3),
    "all": (["--amp", "bf16", "--channels_last", "on", "--fused_kernels", "on", "--fused_adam", "on",
             "--foreach_cast", "on"], 5e-2, 5e-2, 5e-3),
}
STEPS = 4
# CycleGAN's --fused_kernels case on the CPU, at a size Triton's interpreter runs in minutes (its time goes by
# programs, hardly by tensor size): 2 filters, 24 x 24 images, a 2-layer PatchGAN, no identity passes (the same
# generators a third time), against its own reference at that size. Every fused pattern still runs (norm + ReLU, the
# blocks' skip adds and pads written by the norms, the 3-pixel output pad, the fused losses). Not 16 x 16: there the
# InstanceNorms over 4 x 4 and 3 x 3 planes amplify rounding past the tolerances.
CPU_SMALL = {("cycle_gan", "fused_kernels"): (["--ngf", "2", "--ndf", "2", "--netD", "n_layers", "--n_layers_D", "2",
                                               "--lambda_identity", "0"], 24)}


@pytest.fixture(scope="module")
def reference_runs():
    return {model: train_steps(model, OFF, STEPS) for model in ("pix2pix", "cycle_gan")}


@pytest.mark.parametrize("model_name, path", [
    (model_name, path) for model_name in ("pix2pix", "cycle_gan") for path in sorted(CPU_PATHS)
    # every path of CycleGAN's generator passes is covered one by one; all together only on a GPU,
    # since in Triton's interpreter that one run alone takes minutes
    if (torch.cuda.is_available() or (model_name, path) != ("cycle_gan", "all"))
    and (model_name, path) != ("pix2pix", "batch_passes")
])
def test_fast_path_trains_like_the_reference(model_name, path, request):
    flags, loss_rtol, loss_atol, weight_atol = CPU_PATHS[path]
    if DEVICE.type == "cpu" and (model_name, path) in CPU_SMALL:
        small, image_size = CPU_SMALL[model_name, path]
        reference = train_steps(model_name, OFF + small, STEPS, image_size=image_size)
        run = train_steps(model_name, OFF + small + flags, STEPS, image_size=image_size)
    else:
        reference = request.getfixturevalue("reference_runs")[model_name]
        run = train_steps(model_name, OFF + flags, STEPS)
    assert_same_training(run, reference, loss_rtol, loss_atol, weight_atol)


@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
def test_compiled_networks_train_like_the_reference(model_name, reference_runs):
    """--compile (here with channels-last, as the benchmark's compile row): TorchDynamo must really capture the
    networks (their graphs counted), and inductor's kernels train as the eager reference does. The first run on a
    machine compiles for about a minute; inductor caches the result for the next."""
    torch._dynamo.reset()
    dynamo_counters.clear()
    run = train_steps(model_name, OFF + ["--compile", "--channels_last", "on"], STEPS)
    assert dynamo_counters["stats"]["unique_graphs"] > 0
    assert_same_training(run, reference_runs[model_name], *CPU_PATHS["channels_last"][1:])
    torch._dynamo.reset()


@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
@pytest.mark.parametrize("fused_adam", [False, True], ids=["adam", "fused_adam"])
def test_fp16_with_grad_scaler_trains_like_the_reference(model_name, fused_adam, reference_runs, monkeypatch):
    """fp16 autocast with the GradScaler, the path of GPUs without bf16; on the CPU by setting the config directly
    (--amp fp16 asks for a GPU). The scaler starts at 2**8, where these small nets' scaled gradients stay finite,
    and doubles after every step: its final scale shows one update per iteration and no skipped step, so the run
    must follow the reference. (At its default 2**16 it skips the first steps, as designed, and the runs part.)"""
    scalers = []

    class RecordingScaler(torch.amp.GradScaler):
        def __init__(self, device, enabled=True):
            super().__init__(device, init_scale=2.0**8, growth_interval=1, enabled=enabled)
            scalers.append(self)

    monkeypatch.setattr(torch.amp, "GradScaler", RecordingScaler)
    run = train_steps(model_name, OFF, STEPS, amp_dtype=torch.float16, fused_adam=fused_adam)
    assert [scaler.get_scale() for scaler in scalers] == [2.0 ** (8 + STEPS)]
    assert_same_training(run, reference_runs[model_name], *CPU_PATHS["bf16"][1:])


# Under CUDA graphs CycleGAN's image pool draws on the device (DeviceImagePool, tested on its own
# below), not from python's random as the reference does; the step-by-step comparisons use no pool.
NO_POOL = ["--pool_size", "0"]


@requires_cuda
@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
def test_optimizer_in_backward_on_a_side_stream_in_a_cuda_graph_trains_like_after_backward(model_name):
    """The per-parameter steps on their side stream, captured in the iteration's graph with the step copies they
    rewrite, against the same graphed run stepping after backward (cuDNN may pick other algorithms per capture)."""
    flags = OFF + NO_POOL + ["--cuda_graph", "on", "--fused_adam", "on", "--amp", "bf16", "--step_cast", "on"]
    run = train_steps(model_name, flags + ["--overlap_optimizer", "on"], STEPS + 6)
    assert_same_training(run, train_steps(model_name, flags, STEPS + 6), 5e-3, 1e-4, 1e-4)


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


@requires_cuda
@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
def test_cuda_graph_trains_like_eager(model_name):
    """fp32 graph replay vs eager: the same kernels, but cuDNN may pick other algorithms during capture;
    GAN losses amplify such rounding differences over the 10 steps (seen: 1.5e-3 relative at step 8)."""
    run = train_steps(model_name, OFF + NO_POOL + ["--cuda_graph", "on", "--fused_adam", "on"], STEPS + 6)
    eager = train_steps(model_name, OFF + NO_POOL + ["--fused_adam", "on"], STEPS + 6)
    assert_same_training(run, eager, 5e-3, 1e-4, 1e-4)


@pytest.fixture
def one_process_group():
    """A process group of this process alone (NCCL on a GPU, gloo on the CPU): DDP then runs its reducer and
    all-reduces as with many processes."""
    if DEVICE.type == "cuda":
        if not dist.is_nccl_available():
            pytest.skip("needs torch.distributed with NCCL")
        device = torch.device("cuda", torch.cuda.current_device())
        dist.init_process_group("nccl", store=dist.HashStore(), rank=0, world_size=1, device_id=device)
    else:
        if not dist.is_gloo_available():
            pytest.skip("needs torch.distributed with gloo")
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


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


@requires_cuda
@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
def test_full_fast_path_on_cuda_stays_near_the_reference(model_name):
    run = train_steps(model_name, NO_POOL + ["--amp", "bf16", "--channels_last", "on", "--fused_kernels", "on",
                                             "--fused_adam", "on", "--cuda_graph", "on"], STEPS + 6)
    reference = train_steps(model_name, OFF + NO_POOL, STEPS + 6)
    assert_same_training(run, reference, 5e-2, 5e-2, 5e-3)


def test_batched_discriminator_passes_train_like_separate_ones_with_instance_norm():
    """pix2pix batches D's fake and real passes when its norms are per sample (the default BatchNorm forbids it,
    tested below); CycleGAN's batching is covered by the path test above."""
    run = train_steps("pix2pix", OFF + ["--norm", "instance", "--batch_passes", "on"], STEPS)
    reference = train_steps("pix2pix", OFF + ["--norm", "instance"], STEPS)
    assert_same_training(run, reference, *CPU_PATHS["batch_passes"][1:])


@pytest.mark.parametrize("identity", [True, False], ids=["identity", "no_identity"])
def test_batched_cycle_gan_passes_count_and_shapes(identity):
    """Three generator passes instead of six (four without identity images) over one image: G_A over the real A
    (and B) images, G_B over the real B, the fake B (the A cycle) (and the real A) images, then G_A over the fake A
    (the B cycle); D once per step. Without identity images the run still trains like the reference."""
    flags = ["--batch_passes", "on", "--lambda_identity", "0.5" if identity else "0"]
    opt = make_opt("cycle_gan", *OFF, *flags, "--batch_size", "1")
    model = create_model(opt)
    model.setup(opt)
    train_step = prepare_model(model, resolve_engine(opt, DEVICE))
    batches = {name: [] for name in model.model_names}
    for name in model.model_names:
        getattr(model, "net" + name).register_forward_hook(
            lambda module, args, output, name=name: batches[name].append(args[0].shape[0]))
    model.set_input({"A": torch.rand(1, 3, 32, 32), "B": torch.rand(1, 3, 32, 32), "A_paths": ["a"], "B_paths": ["b"]})
    train_step()
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


def test_device_image_pool_fills_then_swaps_on_device():
    torch.manual_seed(0)
    pool = DeviceImagePool(4)
    first = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous()
    assert torch.equal(pool.query(first), first) and pool.is_full()
    swapped = 0
    for step in range(200):
        image = torch.full((1, 3, 2, 2), 100.0 + step)
        out = pool.query(image)
        bank_values = set(pool.bank[:, 0, 0, 0].tolist())
        if out[0, 0, 0, 0] != image[0, 0, 0, 0]:
            swapped += 1
            assert 100.0 + step in bank_values  # the new image took the returned one's slot
        assert len(pool.bank) == 4
    assert 70 < swapped < 130  # p = 0.5
    restored = ImagePool(4)
    restored.load_state_dict(pool.state_dict())
    assert torch.equal(torch.cat(restored.images), pool.bank)


class FakeCudaGraphs:
    """torch.cuda's stream and graph calls that GraphedTrainStep makes, on the CPU: the capture runs the step once
    with ``capturing`` set, and a replay runs it again. What the order of pool filling, bank building and capture
    does to a real graph is then visible: each pool's bank as the capture found it and left it."""

    def __init__(self, monkeypatch):
        self.capturing, self.banks_at_capture, self.graphed = False, None, None
        fakes = self

        class Graph:
            def replay(self):
                fakes.graphed.step()

        @contextlib.contextmanager
        def graph(_graph, **_):
            pools = [getattr(self.graphed.model, name) for name in self.graphed.model.pool_names]
            before = [pool.bank for pool in pools]
            self.capturing = True
            yield
            self.capturing = False
            self.banks_at_capture = list(zip(before, [pool.bank for pool in pools]))

        class Stream:
            def wait_stream(self, _):
                pass

        monkeypatch.setattr(torch.cuda, "Stream", lambda *_: Stream())
        monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
        monkeypatch.setattr(torch.cuda, "graph", graph)
        monkeypatch.setattr(torch.cuda, "stream", lambda _: contextlib.nullcontext())
        monkeypatch.setattr(torch.cuda, "current_stream", lambda *_: Stream())
        monkeypatch.setattr(torch.cuda, "synchronize", lambda *_: None)
        adam = torch.optim.Adam  # capturable Adam is for CUDA devices only
        monkeypatch.setattr(torch.optim, "Adam", lambda params, capturable, **kw: adam(params, foreach=False, **kw))


@pytest.mark.parametrize("pool_size, batch_size", [(5, 1), (6, 2), (2, 1)])  # full after, on, before the warm-up
def test_a_cuda_graph_is_captured_after_the_image_pools_bank_is_built(monkeypatch, pool_size, batch_size):
    """CycleGAN under --cuda_graph with a pool that fills during warm-up: the step captured must find each pool's bank
    built (a bank built inside the capture is rebuilt at each replay from freed memory, and no swap persists) and
    leave it in place, and the replays keep swapping into that same bank."""
    fakes = FakeCudaGraphs(monkeypatch)
    opt = make_opt("cycle_gan", *OFF, "--pool_size", str(pool_size), "--batch_size", str(batch_size))
    torch.manual_seed(0)
    model = create_model(opt)
    model.setup(opt)
    graphed = prepare_model(model, dataclasses.replace(resolve_engine(opt, DEVICE), cuda_graph=True))
    fakes.graphed = graphed
    pools = [getattr(model, name) for name in model.pool_names]
    assert all(isinstance(pool, DeviceImagePool) for pool in pools)
    gen = torch.Generator().manual_seed(1)
    for step in range(10):
        model.set_input({"A": torch.rand(batch_size, 3, 32, 32, generator=gen),
                         "B": torch.rand(batch_size, 3, 32, 32, generator=gen), "A_paths": [""], "B_paths": [""]})
        graphed()
    assert graphed.graph is not None
    for before, after in fakes.banks_at_capture:
        assert before is not None, "the capture found a pool without its bank"
        assert after is before
    banks = [pool.bank for pool in pools]
    assert all(bank.shape[0] == pool_size for bank in banks)
    graphed()  # a replay swaps into the same bank
    assert [pool.bank for pool in pools] == banks


def test_a_device_pool_builds_its_bank_as_it_fills_and_as_a_full_pool_is_loaded():
    pool = DeviceImagePool(3)
    pool.query(torch.zeros(2, 3, 2, 2))
    assert pool.bank is None and not pool.is_full()
    pool.query(torch.ones(2, 3, 2, 2))  # fills mid-batch: the last image goes through the reference's draw
    assert pool.is_full() and pool.bank.shape == (3, 3, 2, 2) and pool.images == []
    loaded = DeviceImagePool(3)
    loaded.load_state_dict(pool.state_dict())
    assert loaded.is_full() and torch.equal(loaded.bank, pool.bank)


@requires_cuda
def test_a_graph_replayed_pool_keeps_its_swaps():
    """On CUDA: a full pool's query captured in a graph and replayed with new images. Each replay must return, per
    image, the new image or one the bank held before it, and leave the bank holding exactly the old bank with those
    swaps applied (no draws compared: any seed gives the same invariants; the bug rebuilt the bank each replay)."""
    device = torch.device("cuda")
    pool = DeviceImagePool(4)
    pool.query(torch.arange(4.0, device=device).view(4, 1, 1, 1).expand(4, 3, 2, 2).contiguous())
    static = torch.zeros(2, 3, 2, 2, device=device)
    pool.query(static)  # warm-up, eager
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = pool.query(static)
    swaps = 0
    for replay in range(50):
        before = pool.bank[:, 0, 0, 0].tolist()
        fresh = [100.0 + 2 * replay, 101.0 + 2 * replay]
        static.copy_(torch.tensor(fresh, device=device).view(2, 1, 1, 1).expand(2, 3, 2, 2))
        graph.replay()
        torch.cuda.synchronize()
        returned, after = out[:, 0, 0, 0].tolist(), pool.bank[:, 0, 0, 0].tolist()
        expected = sorted(before + fresh)
        for value in returned:
            expected.remove(value)
        assert sorted(after) == expected, (replay, before, fresh, returned, after)
        swaps += sum(value not in fresh for value in returned)
    assert swaps > 10


def engine_for(*flags):
    return resolve_engine(make_opt("pix2pix", *flags), torch.device("cpu"))


def test_auto_switches_keep_the_reference_path_on_cpu():
    config = engine_for()
    assert (config.amp_dtype, config.channels_last, config.fused_kernels, config.fused_adam, config.foreach_cast,
            config.batch_passes, config.cuda_graph) == (None, False, False, False, False, False, False)
    assert "reference path" in config.describe()


@pytest.mark.parametrize("flags, message", [
    (["--cuda_graph", "on"], "needs a GPU"),
    (["--amp", "fp16"], "needs a GPU"),
    (["--batch_passes", "on"], "BatchNorm normalizes over the batch"),
    (["--foreach_cast", "on"], "needs --amp bf16 or fp16"),
    (["--step_cast", "on"], "needs --amp bf16 or fp16"),
    (["--amp", "bf16", "--step_cast", "on", "--foreach_cast", "on"], "turn one off"),
    (["--fused_kernels", "on", "--compile"], "--compile with --fused_kernels on is not supported"),
    (["--two_streams", "on"], "it needs a GPU; only CycleGAN has two independent updates"),
])
def test_impossible_switches_say_why(flags, message):
    with pytest.raises(OptionError, match=message):
        engine_for(*flags)


def test_cuda_graphs_under_ddp_only_when_asked(monkeypatch):
    """Resolved for a GPU without one: --amp bf16 avoids asking the device about bf16."""
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    opt = make_opt("pix2pix", "--amp", "bf16")
    auto = resolve_engine(opt, torch.device("cuda"))
    assert auto.ddp and auto.fused_kernels and not auto.cuda_graph
    opt.cuda_graph = "on"
    assert resolve_engine(opt, torch.device("cuda")).cuda_graph


def test_auto_prefers_step_written_weight_copies_to_per_forward_casts_on_a_gpu():
    """Resolved for a GPU without one (--amp bf16 avoids asking the device about bf16)."""
    auto = resolve_engine(make_opt("pix2pix", "--amp", "bf16"), torch.device("cuda"))
    assert auto.step_cast and not auto.foreach_cast
    per_forward = resolve_engine(make_opt("pix2pix", "--amp", "bf16", "--step_cast", "off"), torch.device("cuda"))
    assert per_forward.foreach_cast and not per_forward.step_cast


def test_optimizer_in_backward_is_refused_under_ddp_and_fp16(monkeypatch):
    """Resolved for a GPU without one; DDP's averaging and fp16's inf checks come after a gradient's hook."""
    with pytest.raises(OptionError, match="fp16's loss scaler"):
        resolve_engine(make_opt("pix2pix", "--amp", "fp16", "--overlap_optimizer", "on"), torch.device("cuda"))
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(OptionError, match="DDP averages"):
        resolve_engine(make_opt("pix2pix", "--amp", "bf16", "--overlap_optimizer", "on"), torch.device("cuda"))
    assert not resolve_engine(make_opt("pix2pix", "--amp", "bf16"), torch.device("cuda")).overlap_optimizer


def test_two_streams_stay_off_unless_asked_and_are_refused_where_untested(monkeypatch):
    """Resolved for a GPU without one: auto is off until measured; DDP and the overlapped optimizer's own stream
    are refused with the reason."""
    gpu = torch.device("cuda")
    assert not resolve_engine(make_opt("cycle_gan", "--amp", "bf16"), gpu).two_streams
    assert resolve_engine(make_opt("cycle_gan", "--amp", "bf16", "--two_streams", "on"), gpu).two_streams
    with pytest.raises(OptionError, match="side stream of its own"):
        resolve_engine(make_opt("cycle_gan", "--amp", "bf16", "--two_streams", "on", "--overlap_optimizer", "on"), gpu)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    with pytest.raises(OptionError, match="DDP's reducer"):
        resolve_engine(make_opt("cycle_gan", "--amp", "bf16", "--two_streams", "on"), gpu)


def test_compile_leaves_the_fused_kernels_off_on_a_gpu():
    """Resolved for a GPU without one (--amp bf16 avoids asking the device about bf16)."""
    assert resolve_engine(make_opt("pix2pix", "--amp", "bf16"), torch.device("cuda")).fused_kernels
    assert not resolve_engine(make_opt("pix2pix", "--amp", "bf16", "--compile"), torch.device("cuda")).fused_kernels


def test_reference_flag_turns_everything_off():
    config = engine_for("--reference", "--amp", "bf16", "--channels_last", "on")
    assert config.amp_dtype is None and not config.channels_last
