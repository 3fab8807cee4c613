"""The Triton Adam (--adam_kernel triton) against torch.optim.Adam: the step alone, training, checkpoints, resume.

In Triton's interpreter on the CPU the kernel's fp32 arithmetic is numpy's, so parameters and moments match torch's
to the last bit or two (torch's CPU kernels fuse some multiply-adds), and the bf16 copies it writes are exactly
torch's cast of its parameters.
"""

import copy
import io
import random

import pytest
import torch
from torch import nn

from fastp2p.checkpoint import unwrap
from fastp2p.engine import prepare_model, resolve_engine, runtime_for
from fastp2p.errors import OptionError
from fastp2p.kernels import TritonAdam
from fastp2p.models import create_model
from tests.conftest import requires_cuda
from tests.engine.helpers import (
    OFF,
    STEPS,
    assert_same_training,
    make_opt,
    one_process_group,  # noqa: F401 (a fixture used by name)
    train_steps,
)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ULPS = 2.5e-7  # relative: two fp32 ulps


def fresh_parameters(seed):
    """Parameters of the shapes a network has: conv weights (channels-last, one with a single output channel, whose
    size-1 dimension has a stride of its own), a transposed conv's, biases, norm weights, a matrix; ~70k elements, so
    several blocks per row on a GPU."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(64, 32, 4, 4), (1, 16, 4, 4), (32, 16, 4, 4), (64,), (1,), (3, 7), (300, 7)]
    params = [torch.randn(shape, generator=generator) for shape in shapes]
    params[:3] = [p.contiguous(memory_format=torch.channels_last) for p in params[:3]]
    return [nn.Parameter(p.to(DEVICE)) for p in params]


def set_gradients(pairs, generator):
    """The same random gradient on each (torch's parameter, the kernel's), in the parameter's layout."""
    for theirs, ours in pairs:
        grad = torch.randn(theirs.shape, generator=generator).to(DEVICE)
        theirs.grad = torch.empty_like(theirs).copy_(grad)
        ours.grad = torch.empty_like(ours).copy_(grad)


def assert_equal_to_ulps(actual, expected, what, scale=None):
    """Equal but for a couple of fp32 ulps of ``scale``, the magnitude of the terms that made the values (by default
    the tensor's largest value): torch's CPU kernels fuse some multiply-adds, numpy does not, and a moment near 0 is
    the difference of two rounded terms of the gradients' size."""
    scale = expected.abs().max().item() if scale is None else scale
    torch.testing.assert_close(actual.float(), expected.float(), rtol=ULPS, atol=ULPS * scale, msg=what)


@pytest.mark.parametrize("beta1", [0.5, 0.9], ids=["beta1_0.5", "beta1_0.9"])  # both sides of torch's lerp
@pytest.mark.parametrize("foreach", [False, True], ids=["single_tensor", "foreach"])
def test_steps_match_torch_adam_and_write_the_copies(foreach, beta1):
    torch_params, kernel_params = fresh_parameters(0), fresh_parameters(0)
    reference = torch.optim.Adam(torch_params, lr=2e-4, betas=(beta1, 0.999), foreach=foreach)
    kernel = TritonAdam(kernel_params, lr=2e-4, betas=(beta1, 0.999))
    copied = kernel_params[:3] + kernel_params[4:5]  # the conv weights and a bias; the rest has no copy
    copies = [torch.zeros_like(p, dtype=torch.bfloat16) for p in copied]
    kernel.write_copies(copied, copies)
    generator = torch.Generator().manual_seed(1)
    for step in range(1, 5):
        set_gradients(zip(torch_params, kernel_params), generator)
        reference.step()
        kernel.step()
        for i, (theirs, ours) in enumerate(zip(torch_params, kernel_params)):
            assert_equal_to_ulps(ours, theirs, f"step {step} parameter {i}")
            grad_size = theirs.grad.abs().max().item()
            for name, scale in (("exp_avg", grad_size), ("exp_avg_sq", grad_size**2)):
                assert_equal_to_ulps(kernel.state[ours][name], reference.state[theirs][name], f"{name} {i}", scale)
            assert kernel.state[ours]["step"].item() == reference.state[theirs]["step"].item() == step
        for i, (parameter, written) in enumerate(zip(copied, copies)):
            assert torch.equal(written, parameter.detach().to(torch.bfloat16)), f"step {step} copy {i}"


def test_a_parameter_without_a_gradient_is_not_stepped():
    params = fresh_parameters(0)[3:5]
    kernel = TritonAdam(params, lr=0.1, betas=(0.5, 0.999))
    before = params[1].detach().clone()
    params[0].grad = torch.ones_like(params[0])
    kernel.step()
    kernel.step()
    assert torch.equal(params[1], before) and params[1] not in kernel.state
    assert kernel.state[params[0]]["step"].item() == 2


def test_bf16_moments_stay_near_fp32_ones():
    """--adam_moments bf16: the moments are stored rounded to bf16, the rest of the math as with fp32 ones."""
    fp32_params, bf16_params = fresh_parameters(0), fresh_parameters(0)
    fp32 = TritonAdam(fp32_params, lr=2e-4, betas=(0.5, 0.999))
    bf16 = TritonAdam(bf16_params, lr=2e-4, betas=(0.5, 0.999), moment_dtype=torch.bfloat16)
    generator = torch.Generator().manual_seed(1)
    for step in range(4):
        set_gradients(zip(fp32_params, bf16_params), generator)
        fp32.step()
        bf16.step()
        if step == 0:  # from zero moments, exact fp32 values: rounded to nearest even, as torch rounds
            for ours in bf16_params:
                assert torch.equal(bf16.state[ours]["exp_avg"], (ours.grad * 0.5).to(torch.bfloat16))
    for ours, theirs in zip(bf16_params, fp32_params):
        for name in ("exp_avg", "exp_avg_sq"):
            assert bf16.state[ours][name].dtype == torch.bfloat16
            assert bf16.state[ours][name].stride() == ours.stride()
            expected = fp32.state[theirs][name]
            torch.testing.assert_close(bf16.state[ours][name].float(), expected, rtol=2**-7,
                                       atol=2**-8 * expected.abs().max().item())
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)  # a tenth of a step at lr 2e-4


@pytest.mark.parametrize("moment_dtype", [torch.float32, torch.bfloat16], ids=["fp32_moments", "bf16_moments"])
def test_state_dicts_are_torch_adams_both_ways(moment_dtype):
    """A checkpoint's optimizer state is torch.optim.Adam's: the same keys and tensors (fp32 moments once loaded into
    torch's), and each loads into the other, including a torch state whose moments are not in the parameters'
    channels-last layout, from which both continue alike."""
    torch_params, kernel_params = fresh_parameters(0), fresh_parameters(0)
    reference = torch.optim.Adam(torch_params, lr=2e-4, betas=(0.5, 0.999))
    kernel = TritonAdam(kernel_params, lr=2e-4, betas=(0.5, 0.999), moment_dtype=moment_dtype)
    generator = torch.Generator().manual_seed(1)
    set_gradients(zip(torch_params, kernel_params), generator)
    reference.step()
    kernel.step()
    ours, theirs = kernel.state_dict(), reference.state_dict()
    assert ours["param_groups"][0].keys() == theirs["param_groups"][0].keys()
    assert ours["state"].keys() == theirs["state"].keys()
    assert all(ours["state"][i].keys() == theirs["state"][i].keys() for i in theirs["state"])

    saved = copy.deepcopy(theirs)
    for state in saved["state"].values():  # as saved by a run without --channels_last
        state["exp_avg"] = state["exp_avg"].contiguous()
    kernel.load_state_dict(saved)
    for parameter in kernel_params:
        assert kernel.state[parameter]["exp_avg"].stride() == parameter.stride()
        assert kernel.state[parameter]["exp_avg"].dtype == moment_dtype
        assert kernel.state[parameter]["step"].device == parameter.device
    with torch.no_grad():
        for theirs_p, ours_p in zip(torch_params, kernel_params):
            ours_p.copy_(theirs_p)
    back = torch.optim.Adam(fresh_parameters(2), lr=2e-4, betas=(0.5, 0.999))
    back.load_state_dict(kernel.state_dict())
    assert all(state["exp_avg"].dtype == torch.float32 for state in back.state.values())
    set_gradients(zip(torch_params, kernel_params), generator)
    reference.step()
    kernel.step()
    for theirs_p, ours_p in zip(torch_params, kernel_params):
        if moment_dtype == torch.float32:
            assert_equal_to_ulps(ours_p, theirs_p, "after loading")
        else:
            torch.testing.assert_close(ours_p, theirs_p, rtol=0, atol=2e-5)
        assert kernel.state[ours_p]["step"].item() == 2


BF16_STEP_CAST = ["--amp", "bf16", "--step_cast", "on"]


@pytest.mark.parametrize("model_name, flags", [
    pytest.param("pix2pix", [], id="pix2pix_fp32"), pytest.param("pix2pix", BF16_STEP_CAST, id="pix2pix_bf16_step_cast"),
    pytest.param("cycle_gan", BF16_STEP_CAST, id="cycle_gan_bf16_step_cast", marks=pytest.mark.slow)])
def test_trains_like_torch_adam_and_writes_the_step_copies_itself(model_name, flags, monkeypatch):
    """Loss by loss and weight by weight as torch's Adam, to the last bits of Adam's arithmetic (bf16 forwards
    round the weights and so magnify a last-bit difference into the losses' last bits, rarely); under --step_cast the
    copies come from the kernel: the foreach copy after a step never runs."""
    from fastp2p.engine.weight_cast import StepCopies

    refreshes = []
    refresh = StepCopies.refresh
    monkeypatch.setattr(StepCopies, "refresh", lambda self: refreshes.append(1) or refresh(self))
    kernel = train_steps(model_name, OFF + flags + ["--adam_kernel", "triton"], STEPS)
    networks = 2 if model_name == "pix2pix" else 4
    assert len(refreshes) == (networks if flags else 0)  # each network's first copies, made at setup
    assert_same_training(kernel, train_steps(model_name, OFF + flags, STEPS), 1e-4, 1e-6, 1e-6)


def test_fp16_with_its_loss_scaler_trains_like_torch_adam(monkeypatch):
    """fp16's GradScaler unscales the gradients in place and calls step() only when they are finite, which the kernel
    then takes as torch's Adam does; the step copies are fp16. The scaler starts at 2**8 and doubles after every
    step (as in test_engine's fp16 test), so its final scale shows that no step was skipped."""
    scalers, grad_scaler = [], torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled: scalers.append(
        grad_scaler(device, init_scale=2.0**8, growth_interval=1, enabled=enabled)) or scalers[-1])
    fp16 = dict(amp=torch.float16)
    kernel = train_steps("pix2pix", OFF + BF16_STEP_CAST + ["--adam_kernel", "triton"], STEPS, **fp16)
    assert_same_training(kernel, train_steps("pix2pix", OFF + BF16_STEP_CAST, STEPS, **fp16), 1e-4, 1e-6, 1e-6)
    assert [scaler.get_scale() for scaler in scalers] == [2.0 ** (8 + STEPS)] * 2


@pytest.mark.slow
def test_gradients_in_ddps_buckets_train_like_no_ddp(one_process_group):
    """DDP's gradients are views into its all-reduce buckets (gradient_as_bucket_view), here of channels-last
    parameters: the kernel reads them where they are, in the parameters' strides."""
    flags = OFF + BF16_STEP_CAST + ["--channels_last", "on", "--adam_kernel", "triton"]
    assert_same_training(train_steps("pix2pix", flags, STEPS, ddp=True), train_steps("pix2pix", flags, STEPS), 0, 0, 0)


def trained_model(flags, steps, state=None):
    """A pix2pix model after ``steps`` steps on fixed batches (the first ``state`` loaded first, as a resume)."""
    opt = make_opt("pix2pix", *OFF, *flags, "--batch_size", "2")
    torch.manual_seed(0)
    random.seed(0)
    config = resolve_engine(opt, DEVICE)
    model = create_model(opt, runtime_for(config, DEVICE))
    model.setup(opt)
    if state is not None:  # in the trainer's order: weights at setup, the optimizers' state once they are built
        nets, training, done = state
        for name, net in model.networks():
            net.load_state_dict(nets[name])
    train_step = prepare_model(model, config)
    generator = torch.Generator().manual_seed(1)
    batches = [{"A": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1,
                "B": torch.rand(2, 3, 32, 32, generator=generator) * 2 - 1, "A_paths": ["a"] * 2,
                "B_paths": ["b"] * 2} for _ in range(4)]
    if state is not None:
        model.load_training_state(training)
        batches = batches[done:]
    for batch in batches[:steps]:
        train_step(batch)
    return model


def saved(model, steps):
    """What a checkpoint holds (the networks' weights and the training state), written and read back."""
    buffer = io.BytesIO()
    torch.save(({name: unwrap(net).state_dict() for name, net in model.networks()}, model.training_state()), buffer)
    buffer.seek(0)
    return (*torch.load(buffer, weights_only=False), steps), buffer.getbuffer().nbytes


@pytest.mark.slow
def test_checkpoints_hold_torch_adams_state_and_a_resume_continues_the_run():
    flags = BF16_STEP_CAST + ["--adam_kernel", "triton"]
    kernel_state, kernel_bytes = saved(trained_model(flags, 2), 2)
    torch_state, torch_bytes = saved(trained_model(flags[:-2], 2), 2)
    assert kernel_bytes == pytest.approx(torch_bytes, rel=0.01)
    for ours, theirs in zip(kernel_state[1]["optimizers"], torch_state[1]["optimizers"]):
        assert ours["state"].keys() == theirs["state"].keys()
        for i in theirs["state"]:
            assert ours["state"][i].keys() == theirs["state"][i].keys()
            torch.testing.assert_close(ours["state"][i]["exp_avg"], theirs["state"][i]["exp_avg"],
                                       rtol=1e-5, atol=1e-9)
    assert kernel_state[0]["G"].keys() == torch_state[0]["G"].keys()

    resumed = trained_model(flags, 2, kernel_state)
    continuous = trained_model(flags, 4)
    for (name, net), (_, other) in zip(resumed.networks(), continuous.networks()):
        for key, value in net.state_dict().items():
            assert torch.equal(value, other.state_dict()[key]), f"{name}.{key}"
    for optimizer, other in zip(resumed.optimizers, continuous.optimizers):
        for parameter, other_parameter in zip(optimizer.param_groups[0]["params"], other.param_groups[0]["params"]):
            assert optimizer.state[parameter]["step"].item() == other.state[other_parameter]["step"].item() == 4


@pytest.mark.parametrize("flags, message", [
    (["--adam_kernel", "triton", "--overlap_optimizer", "on"], "steps each parameter from its own gradient hook"),
    (["--adam_kernel", "triton", "--fused_adam", "on"], "asks for torch's fused Adam"),
    (["--adam_moments", "bf16"], "needs --adam_kernel triton"),
])
def test_impossible_combinations_say_why(flags, message):
    with pytest.raises(OptionError, match=message):
        resolve_engine(make_opt("pix2pix", *flags), torch.device("cpu"))


def test_auto_is_torchs_fused_adam_and_triton_says_so(monkeypatch):
    """Resolved for a GPU without one (--amp bf16 avoids asking the device about bf16); on the CPU the kernel needs
    the interpreter."""
    auto = resolve_engine(make_opt("pix2pix", "--amp", "bf16"), torch.device("cuda"))
    assert auto.fused_adam and auto.adam_kernel == "torch"
    triton = resolve_engine(make_opt("pix2pix", "--amp", "bf16", "--adam_kernel", "triton", "--adam_moments", "bf16"),
                            torch.device("cuda"))
    assert triton.adam_kernel == "triton" and not triton.fused_adam and triton.adam_moments == torch.bfloat16
    assert "triton_adam" in triton.describe() and "bf16 Adam moments" in triton.describe()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(OptionError, match="TRITON_INTERPRET=1"):
        resolve_engine(make_opt("pix2pix", "--adam_kernel", "triton"), torch.device("cpu"))


@requires_cuda
@pytest.mark.parametrize("model_name", ["pix2pix", "cycle_gan"])
def test_in_a_cuda_graph_trains_like_torchs_fused_adam(model_name):
    """Captured with the iteration (its tables uploaded in the graph, its step counts and learning rate on the
    device), against torch's fused capturable Adam under the same graph."""
    flags = OFF + ["--pool_size", "0", "--cuda_graph", "on", "--amp", "bf16", "--step_cast", "on"]
    run = train_steps(model_name, flags + ["--adam_kernel", "triton"], STEPS + 6)
    assert_same_training(run, train_steps(model_name, flags + ["--fused_adam", "on"], STEPS + 6), 5e-3, 1e-4, 1e-4)
