"""The implicit-GEMM conv (FusedConv, ConvNorm, fastp2p.kernels.conv) against F.conv2d / F.conv_transpose2d with the
norm and activation before it and the statistics after it: outputs, statistics, every gradient, for each conv kind of
the U-Net, the ResNet generator and the PatchGAN; the --fused_conv converter on whole networks (keys, outputs,
gradients, running statistics) and in training. Without CUDA the kernels run in Triton's interpreter, in fp32, on
tiny shapes with odd sizes."""

import copy

import pytest
import torch
import torch.nn.functional as F

from fastp2p import networks
from fastp2p.engine import resolve_engine
from fastp2p.engine.fusion import fuse_network
from fastp2p.errors import OptionError
from fastp2p.kernels import ConvFunction, ConvNorm, FusedConv, conv_forward
from fastp2p.kernels.conv import ConvGeometry, Prologue, Statistics
from tests.conftest import requires_cuda
from tests.engine.helpers import full_fp32_convolutions  # noqa: F401 (autouse: cuDNN references in true fp32)
from tests.engine.helpers import make_opt
from tests.kernels.utils import DEVICE, TOLERANCES, assert_close_verbose

pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

ATOL, RTOL = 1e-5, 1e-4  # fp32; atol scaled by the largest expected value (see assert_close_verbose)

# name: (N, C_in, H, W, C_out, kernel, ConvGeometry, bias, prologue: None or (norm, activation slope))
CASES = {
    "down_4x4_s2": (3, 5, 9, 7, 6, 4, ConvGeometry(stride=2, padding=1), False, ("instance", 0.2)),
    "down_4x4_s2_batch": (2, 4, 6, 8, 5, 4, ConvGeometry(stride=2, padding=1), False, ("batch", 0.2)),
    "up_4x4_s2": (1, 6, 5, 3, 4, 4, ConvGeometry(transposed=True, stride=2, padding=1), False, ("batch", 0.0)),
    "up_4x4_s2_instance": (3, 4, 3, 4, 3, 4, ConvGeometry(transposed=True, stride=2, padding=1), True,
                           ("instance", 0.0)),
    "patch_4x4_s1": (2, 6, 7, 6, 1, 4, ConvGeometry(stride=1, padding=1), True, ("batch", 0.2)),
    "res_3x3_reflect": (3, 8, 6, 5, 8, 3, ConvGeometry(stride=1, padding=1, reflect=True), False,
                        ("instance", 0.0)),
    "res_3x3_reflect_input": (1, 4, 5, 6, 4, 3, ConvGeometry(stride=1, padding=1, reflect=True), False, None),
    "end_7x7_reflect": (1, 3, 8, 9, 4, 7, ConvGeometry(stride=1, padding=3, reflect=True), False, None),
    "end_7x7_reflect_out": (2, 4, 7, 8, 3, 7, ConvGeometry(stride=1, padding=3, reflect=True), True,
                            ("instance", 0.0)),
    "down_3x3_s2": (2, 4, 7, 8, 8, 3, ConvGeometry(stride=2, padding=1), False, ("batch", 0.0)),
    "up_3x3_s2": (1, 8, 4, 5, 4, 3, ConvGeometry(transposed=True, stride=2, padding=1, output_padding=1), False,
                  ("instance", 0.0)),
    "first_4x4_s2": (3, 3, 6, 5, 4, 4, ConvGeometry(stride=2, padding=1), True, None),
}


def reference_conv(x, weight, bias, geometry, prologue, norm_weight, norm_bias):
    """F.conv2d / F.conv_transpose2d of act(norm(x)), by autograd-differentiable PyTorch ops."""
    if prologue is not None:
        norm, slope = prologue
        x = (F.instance_norm(x) if norm == "instance" else
             F.batch_norm(x, None, None, norm_weight, norm_bias, training=True))
        x = F.leaky_relu(x, slope)
    if geometry.transposed:
        return F.conv_transpose2d(x, weight, bias, geometry.stride, geometry.padding, geometry.output_padding)
    if geometry.reflect:
        return F.conv2d(F.pad(x, (geometry.padding,) * 4, mode="reflect"), weight, bias, geometry.stride)
    return F.conv2d(x, weight, bias, geometry.stride, geometry.padding)


def batch_statistics(x, per_sample, eps=1e-5):
    dims = (2, 3) if per_sample else (0, 2, 3)
    var, mean = torch.var_mean(x, dims, correction=0)
    return mean.reshape(-1, x.shape[1]), torch.rsqrt(var + eps).reshape(-1, x.shape[1])


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=requires_cuda)],
                         ids=["fp32", "bf16"])  # the interpreter's bf16 tl.dot is not the GPU's
@pytest.mark.parametrize("name", sorted(CASES))
def test_conv_matches_pytorch_forward_statistics_and_gradients(name, dtype):
    """Output and its per-(sample, channel) and per-channel statistics, and BatchNorm's running statistics updated
    from the latter; gradients of the input (through the prologue's norm, statistics included), weight, bias and the
    norm's affine parameters. In bf16 the input is bf16 and the parameters fp32 (as under autocast), against the fp32
    ops on the same values."""
    N, C_in, H, W, C_out, kernel, geometry, has_bias, prologue = CASES[name]
    atol, rtol = (ATOL, RTOL) if dtype == torch.float32 else TOLERANCES[dtype]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(DEVICE)  # noqa: E731
    x = (rand(N, C_in, H, W) * 2 + 0.5).to(dtype).to(memory_format=torch.channels_last if N != 2 else
                                                     torch.contiguous_format)
    x_ref = x.detach().float()
    weight = rand(*((C_in, C_out) if geometry.transposed else (C_out, C_in)), kernel, kernel) * 0.3
    bias = rand(C_out) if has_bias else None
    batch_norm = prologue is not None and prologue[0] == "batch"
    norm_weight, norm_bias = (rand(C_in) * 0.3 + 1, rand(C_in) * 0.3) if batch_norm else (None, None)
    params = [t for t in (weight, bias, norm_weight, norm_bias) if t is not None]
    for t in (x, x_ref, *params):
        t.requires_grad_()
    ref = reference_conv(x_ref, weight, bias, geometry, prologue, norm_weight, norm_bias)
    grad = rand(*ref.shape)
    expected = torch.autograd.grad(ref, [x_ref, *params], grad)

    options, stats = None, (None, None)
    if prologue is not None:
        stats = batch_statistics(x_ref.detach(), not batch_norm)
        options = (prologue[1], not batch_norm, True)
    y, *out_stats = ConvFunction.apply(x, weight, bias, *stats, norm_weight, norm_bias, geometry, options,
                                       Statistics(per_sample=True, eps=1e-5))
    assert y.dtype == dtype
    assert_close_verbose(y, ref, atol, rtol, "output")
    running = (torch.zeros(C_out, device=DEVICE), torch.ones(C_out, device=DEVICE),
               torch.zeros((), dtype=torch.long, device=DEVICE), 0.1)
    with torch.no_grad():
        _, batch_stats = conv_forward(x, weight, bias, geometry, None if options is None else Prologue(
            *stats, norm_weight, norm_bias, *options), Statistics(per_sample=False, eps=1e-5, running=running))
    for per_sample, (mean, rstd) in ((True, out_stats), (False, batch_stats)):
        mean_ref, rstd_ref = batch_statistics(ref.detach(), per_sample)
        assert_close_verbose(mean, mean_ref, atol, rtol, f"mean per_sample={per_sample}")
        assert_close_verbose(rstd, rstd_ref, atol, rtol, f"rstd per_sample={per_sample}")
    var_ref, mean_ref = torch.var_mean(ref.detach(), (0, 2, 3))
    assert_close_verbose(running[0], 0.1 * mean_ref, atol, rtol, "running_mean")
    assert_close_verbose(running[1], 0.9 + 0.1 * var_ref, atol, rtol, "running_var")
    assert running[2].item() == 1
    actual = torch.autograd.grad(y, [x, *params], grad.to(dtype))
    for what, a, e in zip(("dx", "dweight", "dbias", "dnorm_weight", "dnorm_bias"), actual, expected):
        assert_close_verbose(a, e, atol, rtol, what)
    assert actual[0].stride() == x.stride()


def test_weight_gradient_split_over_rows_is_summed_in_order():
    """Enough rows of one sample for the weight gradient to split them (3 chunks of 512 in the interpreter): the
    same result as PyTorch, bit for bit the same on a second run."""
    from fastp2p.kernels import conv_weight_grad

    gen = torch.Generator().manual_seed(3)
    geometry = ConvGeometry(stride=1, padding=1)
    x = torch.randn(1, 4, 40, 30, generator=gen).to(DEVICE)
    dy = torch.randn(1, 5, 39, 29, generator=gen).to(DEVICE)
    weight = torch.randn(5, 4, 4, 4, generator=gen).to(DEVICE)
    expected = torch.nn.grad.conv2d_weight(x, weight.shape, dy, stride=1, padding=1)
    first = conv_weight_grad(x, dy, weight, geometry)
    assert_close_verbose(first, expected, ATOL, RTOL, "dweight")
    assert torch.equal(first, conv_weight_grad(x, dy, weight, geometry))


NETS = {  # (network, batch, input size, convs that become FusedConvs, norms that hand off to the conv after them);
    # small nets and inputs for the interpreter. The U-Net's normalized activations all feed a skip: no hand-off.
    "resnet_instance": (lambda: networks.define_G(3, 3, 4, "resnet_6blocks", "instance"), 2, 8, 18, 10),
    "unet_128_batch": (lambda: networks.define_G(3, 3, 2, "unet_128", "batch", use_dropout=False), 1, 128, 11, 0),
    "basic_D_batch": (lambda: networks.define_D(6, 4, "basic", 3, "batch"), 2, 24, 4, 3),
    "n_layers_D_instance": (lambda: networks.define_D(3, 4, "n_layers", 2, "instance"), 2, 16, 3, 2),
}
SLOW_NETS = {"resnet_instance", "unet_128_batch"}  # several seconds each in Triton's interpreter


@pytest.mark.parametrize("name, with_fused_norms", [
    pytest.param(name, fused, marks=[pytest.mark.slow] if name in SLOW_NETS else [])
    for name, fused in [(name, False) for name in sorted(NETS)] + [("resnet_instance", True), ("unet_128_batch", True)]])
def test_fused_conv_network_matches_reference(name, with_fused_norms):
    """fuse_network(fused_conv=True): every conv with a norm before or after it is a FusedConv (the PatchGAN's first
    conv and the U-Net's outermost ones stay), the norms ConvNorms handing off where a conv follows, the pads gone,
    the reference's keys; outputs, every parameter's gradient and the running statistics as the reference's, in
    training, then in eval mode. Also beside --fused_kernels (on a GPU both are on with --fused_conv on): the conv
    converter runs first and the norm fusions take what it leaves."""
    make, batch, size, convs, hand_offs = NETS[name]
    torch.manual_seed(0)
    reference = make().to(DEVICE)
    fused = copy.deepcopy(reference)
    assert fuse_network(fused, fused_kernels=with_fused_norms, fused_conv=True) > 0
    assert list(fused.state_dict()) == list(reference.state_dict())
    assert sum(isinstance(m, FusedConv) for m in fused.modules()) == convs
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d, torch.nn.ReflectionPad2d))
                   for m in fused.modules())
    assert sum(m.hands_off for m in fused.modules() if isinstance(m, ConvNorm)) == hand_offs
    x = torch.randn(batch, next(reference.parameters()).shape[1], size, size, device=DEVICE)
    out_ref, out = reference(x), fused(x)
    assert_close_verbose(out, out_ref, 1e-4, 1e-4, "output")
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)
    out.backward(grad)
    for (key, p_ref), p in zip(reference.named_parameters(), fused.parameters()):
        if p.requires_grad:  # biases InstanceNorm cancels are frozen, as under --fused_kernels
            assert_close_verbose(p.grad, p_ref.grad, 1e-4, 1e-3, key)
    for (key, b_ref), b in zip(reference.state_dict().items(), fused.state_dict().values()):
        assert_close_verbose(b.float(), b_ref.float(), 1e-5, 1e-4, key)
    assert_close_verbose(fused.eval()(x), reference.eval()(x), 1e-4, 1e-4, "eval output")


# Training with --fused_conv against the reference path, loss by loss: tests/engine/test_parity.py.


def test_fused_conv_switch_auto_is_off_and_on_needs_triton_running(monkeypatch):
    """auto leaves --fused_conv off (until a GPU measurement shows it faster); on a CPU, on needs the interpreter."""
    assert not resolve_engine(make_opt("pix2pix"), DEVICE).fused_conv
    assert resolve_engine(make_opt("pix2pix", "--fused_conv", "on"), DEVICE).fused_conv
    if DEVICE.type == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(OptionError, match="fused_conv on is not possible here: on the CPU it runs in Triton.s interpreter"):
            resolve_engine(make_opt("pix2pix", "--fused_conv", "on"), DEVICE)
