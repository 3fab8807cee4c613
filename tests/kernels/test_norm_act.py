"""FusedNormAct against nn.BatchNorm2d / nn.InstanceNorm2d + activation (+ dropout) (+ reflection pad) (+ skip):
outputs, every gradient, running statistics, memory format, state_dict keys, edge cases. Without CUDA it runs in
Triton's interpreter, so CPU shapes stay tiny; the real layer shapes run only on a GPU."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastp2p.kernels import FusedNormAct
from tests.conftest import requires_cuda
from tests.kernels.utils import DEVICE, TOLERANCES, assert_close_verbose

# Triton's interpreter converts loop bounds with a NumPy call that NumPy 2 deprecates; harmless here.
pytestmark = pytest.mark.filterwarnings("ignore:Conversion of an array with ndim:DeprecationWarning")

MODES = ("instance", "batch_train", "batch_eval")
ACTIVATIONS = ("identity", "relu", "leaky_relu")
CPU_SHAPES = [(1, 1, 2, 2), (2, 3, 5, 7), (1, 512, 2, 2), (2, 512, 1, 1), (2, 8, 32, 32)]
CUDA_SHAPES = [(16, 64, 256, 256), (16, 128, 128, 128), (16, 256, 64, 64), (64, 512, 2, 2), (64, 512, 1, 1)]


def reference_norm(mode, channels):
    """The reference module with non-trivial affine parameters and running statistics."""
    if mode == "instance":
        return nn.InstanceNorm2d(channels).to(DEVICE)
    norm = nn.BatchNorm2d(channels).to(DEVICE)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
    return norm.train(mode == "batch_train")


def reference_activation(y, activation):
    if activation == "relu":
        return F.relu(y)
    if activation == "leaky_relu":
        return F.leaky_relu(y, 0.2)
    return y


def layout(x, channels_last):
    return x.to(memory_format=torch.channels_last) if channels_last else x


def random_input(shape, mode):
    """randn * 2 + 0.5; where the statistics of a training norm come from groups of only 2-4 values, randn * 0.01
    with any group whose std is under 0.002 drawn again.

    In so small a group dx is proportional to eps / (var + eps) (for 2 values, to 1 - xhat^2): it has a size
    worth testing only where var is near eps = 1e-5. And where |x| >> std, x - mean cancels: fp32 rounding
    (~1e-7 |x|) divided by the spread moves y and dx beyond any fp32 tolerance, in PyTorch's own fp32 norm too.
    Values of the order of sqrt(eps), with a floor on the spread, avoid both.
    """
    group_dims = (2, 3) if mode == "instance" else (0, 2, 3)
    if mode == "batch_eval" or not 1 < math.prod(shape[d] for d in group_dims) <= 4:
        return torch.randn(shape, device=DEVICE) * 2 + 0.5
    x = torch.randn(shape, device=DEVICE) * 0.01
    while True:
        close = x.std(dim=group_dims, keepdim=True, unbiased=False) < 0.002
        if not close.any():
            return x
        x = torch.where(close, torch.randn_like(x) * 0.01, x)


def check_against_reference(shape, dtype, channels_last, mode, activation, x=None, tolerance=None, padding=None):
    """Run reference (in fp64) and fused (in dtype) on one input; compare y, dx, dweight, dbias, running stats.
    With padding, the reference is followed by F.pad(mode="reflect") and the fused module pads its output."""
    if mode == "instance" and shape[2] * shape[3] == 1:
        pytest.skip("InstanceNorm needs more than one spatial element (tested in test_too_few_values_raise)")
    atol, rtol = tolerance or TOLERANCES[dtype]
    reference = reference_norm(mode, shape[1])
    fused = FusedNormAct.from_norm(copy.deepcopy(reference), activation)
    fused.padding = padding
    pad = (lambda t: F.pad(t, padding, mode="reflect")) if padding else (lambda t: t)
    # fp64 reference: the exact result for the rounded input. It also decides ties at the activation's kink
    # (z exactly 0, common with bf16 inputs and 4-element groups) the way exact fp32 arithmetic does.
    reference.double()
    if x is None:
        x = random_input(shape, mode)
    x = layout(x.to(dtype), channels_last)
    # The reference runs on NCHW copies: torch 2.13's CPU InstanceNorm backward is wrong for a channels-last
    # input with a channels-last gradient (dx off by O(1)), and the layout under test is the fused one's.
    x_ref = x.detach().double().contiguous().requires_grad_()
    x_fused = x.detach().clone().requires_grad_()
    z_ref = pad(reference(x_ref))
    y_ref = reference_activation(z_ref, activation)
    y_fused = fused(x_fused)
    grad = torch.randn(y_ref.shape, device=DEVICE)
    if activation != "identity":
        # At the kink (|z| within fp32 rounding of 0) the fused kernel's fp32 z and the fp64 reference's may fall
        # on opposite sides and pick different slopes, both valid subgradients; seen on CUDA at the real shapes
        # for 1 to 36 of 16-67 M elements, changing dx there and dweight/dbias by grad * xhat. No gradient flows
        # from those elements, so both take the same path everywhere. Exact zeros (bf16 ties in 4-value groups)
        # are among them.
        kink = z_ref.detach().abs() < 1e-5
        assert kink.float().mean().item() < 0.01, "too many elements at the kink for a meaningful test"
        grad = grad.masked_fill(kink.to(grad.device), 0.0)
    grad = layout(grad.to(dtype), channels_last)
    y_ref.backward(grad.double().contiguous())
    y_fused.backward(grad)

    assert y_fused.dtype == dtype
    assert y_fused.stride() == layout(torch.empty(y_ref.shape), channels_last).stride(), \
        "output must keep the input's memory format"
    assert x_fused.grad.stride() == x.stride(), "dx must keep the input's memory format"
    assert_close_verbose(y_fused, y_ref, atol, rtol, "y")
    assert_close_verbose(x_fused.grad, x_ref.grad, atol, rtol, "dx")
    if mode != "instance":
        assert_close_verbose(fused.weight.grad, reference.weight.grad, atol, rtol, "dweight")
        assert_close_verbose(fused.bias.grad, reference.bias.grad, atol, rtol, "dbias")
        assert_close_verbose(fused.running_mean, reference.running_mean, atol, rtol, "running_mean")
        assert_close_verbose(fused.running_var, reference.running_var, atol, rtol, "running_var")
        assert fused.num_batches_tracked.item() == reference.num_batches_tracked.item()


@pytest.mark.parametrize("shape", CPU_SHAPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fp32_matches_reference(shape, channels_last, mode, activation):
    check_against_reference(shape, torch.float32, channels_last, mode, activation)


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 512, 2, 2)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", MODES)
def test_low_precision_matches_reference(shape, dtype, channels_last, mode):
    check_against_reference(shape, dtype, channels_last, mode, "leaky_relu")


@requires_cuda
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", MODES)
def test_real_layer_shapes_on_cuda(shape, dtype, channels_last, mode):
    check_against_reference(shape, dtype, channels_last, mode, "relu")


class NanFilledEmpty:
    """torch, except that empty and empty_like return NaN-filled floats: a kernel that reads a buffer before it is
    written (a combine that runs before every chunk is in) or leaves an output element unwritten fails the test."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return NanFilledEmpty.poison(torch.empty(*args, **kwargs))

    @staticmethod
    def empty_like(*args, **kwargs):
        return NanFilledEmpty.poison(torch.empty_like(*args, **kwargs))

    @staticmethod
    def poison(tensor):
        return tensor.fill_(float("nan")) if tensor.is_floating_point() else tensor


@pytest.mark.parametrize("programs, expected", [(1, {"forward_group_kernel", "backward_group_kernel"}),
                                                 (64, {"stats_partial_kernel", "backward_partial_kernel"})],
                         ids=["one-kernel", "split"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("padding", [None, (1, 1, 1, 1)], ids=["unpadded", "padded"])
def test_both_reduction_paths_match_reference(programs, expected, mode, channels_last, padding, monkeypatch):
    """A group is reduced by one program per channel block (one launch per pass) when that already fills the
    GPU, else in chunks (partial sums that the last chunk to finish combines, then apply). Force each path by
    the GPU size the plan assumes; the groups (2304 rows per sample) are longer than one tile, and BatchNorm's
    span both samples."""
    from fastp2p.kernels import launch, norm_act

    launched = set()

    class Spy:
        def __init__(self, name):
            self.name, self.kernel = name, getattr(norm_act, name)

        def __getitem__(self, grid):
            launched.add(self.name)
            return self.kernel[grid]

    for name in ("forward_group_kernel", "backward_group_kernel", "stats_partial_kernel",
                 "backward_partial_kernel"):
        monkeypatch.setattr(norm_act, name, Spy(name))
    monkeypatch.setattr(norm_act, "target_programs", lambda device: programs)
    monkeypatch.setattr(norm_act, "torch", NanFilledEmpty())
    check_against_reference((2, 4, 48, 48), torch.float32, channels_last, mode, "leaky_relu", padding=padding)
    if mode == "batch_eval":  # running statistics: only the backward's affine-gradient sums reduce
        expected = {name for name in expected if "backward" in name}
    assert launched == expected
    # each split launch's last program resets the tickets it counted with, for the next launch
    assert not any(tickets.any() for buffers in launch._TICKETS.values() for tickets in buffers)


@requires_cuda
@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_split_path_combine_reads_every_chunk_on_cuda(norm, monkeypatch):
    """On a GPU the chunk programs of a split layer run concurrently; the last to take a ticket combines. Were the
    partials not published before the ticket (barrier, release, acquire), a combine would read a chunk still
    unwritten: NaN here, since every fresh buffer is NaN-filled, or a value that changes from run to run. So
    20 runs must all match the reference and each other bit for bit, forward and backward."""
    from fastp2p.kernels import norm_act

    monkeypatch.setattr(norm_act, "torch", NanFilledEmpty())
    reference = reference_norm("instance" if norm == "instance" else "batch_train", 256)
    fused = FusedNormAct.from_norm(copy.deepcopy(reference), "relu")
    x = layout(torch.randn(16, 256, 64, 64, device=DEVICE), True).requires_grad_()
    grad = layout(torch.randn(x.shape, device=DEVICE), True)
    first = None
    for _ in range(20):
        y = fused(x)
        (dx,) = torch.autograd.grad(y, x, grad)
        if first is None:
            first = y, dx
            y_ref = F.relu(reference(x))
            (dx_ref,) = torch.autograd.grad(y_ref, x, grad)
            atol, rtol = TOLERANCES[torch.float32]
            assert_close_verbose(y, y_ref, atol, rtol, "y")
            assert_close_verbose(dx, dx_ref, 1e-4, 1e-3, "dx")  # fp32 sums over 65536 rows in another order
        assert torch.equal(y, first[0]) and torch.equal(dx, first[1]), "split-path results changed between runs"


# (shape, padding (left, right, top, bottom)): the ResNet's pads of 1 and 3, one as wide as its axis allows (both
# mirrors read the same element), and an asymmetric one with a side left unpadded
PAD_CASES = [((2, 3, 5, 7), (1, 1, 1, 1)), ((1, 8, 4, 4), (3, 3, 3, 3)), ((2, 4, 3, 6), (2, 1, 0, 2))]


@pytest.mark.parametrize("shape, padding", PAD_CASES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", MODES)
def test_reflection_padded_output_matches_reference(shape, padding, channels_last, mode):
    """(norm, ReLU, ReflectionPad2d) as one module: the output is written padded, and each element's gradient
    gathers dy from every padded position that copies it."""
    check_against_reference(shape, torch.float32, channels_last, mode, "relu", padding=padding)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", MODES)
def test_reflection_padded_low_precision_matches_reference(dtype, channels_last, mode):
    check_against_reference((2, 3, 5, 7), dtype, channels_last, mode, "relu", padding=(1, 1, 1, 1))


@requires_cuda
@pytest.mark.parametrize("shape, padding", [((1, 256, 64, 64), (1, 1, 1, 1)), ((4, 64, 256, 256), (3, 3, 3, 3))],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_resnet_padded_layers_on_cuda(shape, padding, dtype, channels_last):
    """The ResNet generator's padded layers at 256^2: a block's (IN, ReLU, pad 1), the output layer's pad 3."""
    check_against_reference(shape, dtype, channels_last, "instance", "relu", padding=padding)


@pytest.mark.parametrize("use", ["both", "plain", "padded"])
@pytest.mark.parametrize("programs", [1, 64], ids=["one-kernel", "split"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", MODES)
def test_residual_and_padded_twin_match_reference(mode, channels_last, programs, use, monkeypatch):
    """A ResNet layer's fused form: out = act(norm(x)) + residual, written plain (for the next skip) and padded
    (for the next conv, which takes it instead of padding); the gradients of x and the residual
    come from either output's gradient or from both."""
    from fastp2p.kernels import norm_act

    monkeypatch.setattr(norm_act, "target_programs", lambda device: programs)
    monkeypatch.setattr(norm_act, "torch", NanFilledEmpty())
    padding = (1, 2, 2, 1)
    reference = reference_norm(mode, 4)
    fused = FusedNormAct.from_norm(copy.deepcopy(reference), "relu")
    fused.padding, fused.keep_unpadded = padding, True
    reference.double()
    x, residual = (layout(torch.randn(2, 4, 24, 24, device=DEVICE), channels_last) for _ in range(2))
    x_ref, r_ref = (t.detach().double().contiguous().requires_grad_() for t in (x, residual))
    x_fused, r_fused = (t.detach().clone().requires_grad_() for t in (x, residual))
    z_ref = reference(x_ref)
    out_ref = F.relu(z_ref) + r_ref
    out, padded = fused(x_fused, residual=r_fused)
    kink = z_ref.detach().abs() < 1e-5  # either slope is right there (see check_against_reference)
    grad = torch.randn(out.shape, device=DEVICE).masked_fill(kink, 0.0)
    kink_padded = F.pad(kink.double(), padding, mode="reflect") > 0
    grad_padded = torch.randn(padded.shape, device=DEVICE).masked_fill(kink_padded, 0.0)
    loss_ref = loss = 0
    if use != "padded":
        loss_ref, loss = loss_ref + (out_ref * grad.double()).sum(), loss + (out * grad).sum()
    if use != "plain":
        loss_ref = loss_ref + (F.pad(out_ref, padding, mode="reflect") * grad_padded.double()).sum()
        loss = loss + (padded * grad_padded).sum()
    loss_ref.backward()
    loss.backward()
    atol, rtol = TOLERANCES[torch.float32]
    assert_close_verbose(out, out_ref, atol, rtol, "out")
    assert_close_verbose(padded, F.pad(out_ref, padding, mode="reflect"), atol, rtol, "padded out")
    assert_close_verbose(x_fused.grad, x_ref.grad, atol, rtol, "dx")
    assert_close_verbose(r_fused.grad, r_ref.grad, atol, rtol, "dresidual")
    if mode != "instance":
        assert_close_verbose(fused.weight.grad, reference.weight.grad, atol, rtol, "dweight")
        assert_close_verbose(fused.bias.grad, reference.bias.grad, atol, rtol, "dbias")


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", MODES)
def test_channel_slice_input_matches_reference(mode, channels_last):
    """An input whose H and W flatten but which is not dense (a channel slice of a larger tensor). The kernels
    walk the output and the gradients with the input's strides, so such an input must be made dense first,
    not written past the end of its output."""
    reference = reference_norm(mode, 4)
    fused = FusedNormAct.from_norm(copy.deepcopy(reference), "relu")
    big = layout(torch.randn(2, 8, 5, 6, device=DEVICE), channels_last)
    big_ref, big_fused = big.double().requires_grad_(), big.clone().requires_grad_()
    y_ref, y = F.relu(reference.double()(big_ref[:, 2:6])), fused(big_fused[:, 2:6])
    assert not big_fused[:, 2:6].is_contiguous() and not big_fused[:, 2:6].is_contiguous(
        memory_format=torch.channels_last)
    grad = torch.randn(y.shape, device=DEVICE)
    y_ref.backward(grad.double())
    y.backward(grad)
    atol, rtol = TOLERANCES[torch.float32]
    assert_close_verbose(y, y_ref, atol, rtol, "y")
    assert_close_verbose(big_fused.grad, big_ref.grad, atol, rtol, "dx")


@pytest.mark.parametrize("programs", [1, 64], ids=["one-kernel", "split"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("mode", MODES)
def test_unet_skip_opened_and_closed_like_relu_of_cat(mode, channels_last, programs, monkeypatch):
    """A U-Net level's skip concatenation written by norms: the outer down norm (LeakyReLU) opens it with
    relu(its output) in the first channels, the level's last norm (with dropout) closes it with relu(its
    output) in the rest. Against the same modules' plain outputs (same dropout keys) through F.relu and
    torch.cat, values and gradients."""
    from fastp2p.kernels import norm_act

    monkeypatch.setattr(norm_act, "target_programs", lambda device: programs)
    monkeypatch.setattr(norm_act, "torch", NanFilledEmpty())
    down, up = reference_norm(mode, 4), reference_norm(mode, 6)
    plain_down, plain_up = FusedNormAct.from_norm(down, "leaky_relu"), FusedNormAct.from_norm(up, dropout=0.5)
    opening, closing = copy.deepcopy(plain_down), copy.deepcopy(plain_up)
    opening.skip_width, closing.closes_skip = 6, True
    for a, b in ((plain_down, opening), (plain_up, closing)):
        a.dropout_seed.fill_(7), b.dropout_seed.fill_(7)
    x, h = (layout(torch.randn(2, c, 24, 24, device=DEVICE), channels_last) for c in (4, 6))
    x_plain, h_plain, x_fused, h_fused = (t.clone().requires_grad_() for t in (x, h, x, h))
    y_plain = plain_down(x_plain)
    cat = torch.cat([F.relu(y_plain), F.relu(plain_up(h_plain))], 1)
    y, opened = opening(x_fused)
    skip = closing(h_fused, skip=opened)
    assert skip is opened and skip.shape == cat.shape
    grad_y, grad_cat = torch.randn_like(y_plain), torch.randn_like(cat)
    ((y_plain * grad_y).sum() + (cat * grad_cat).sum()).backward()
    ((y * grad_y).sum() + (skip * grad_cat).sum()).backward()
    atol, rtol = TOLERANCES[torch.float32]
    for actual, expected, name in ((y, y_plain, "y"), (skip, cat, "skip"), (x_fused.grad, x_plain.grad, "dx"),
                                   (h_fused.grad, h_plain.grad, "dh")):
        assert_close_verbose(actual, expected, atol, rtol, name)
    if mode != "instance":
        for fused, plain in ((opening, plain_down), (closing, plain_up)):
            assert_close_verbose(fused.weight.grad, plain.weight.grad, atol, rtol, "dweight")
            assert_close_verbose(fused.bias.grad, plain.bias.grad, atol, rtol, "dbias")


@pytest.mark.parametrize("mode", MODES)
def test_channel_slice_gradient_is_read_in_place(mode):
    """torch.cat's backward hands each input a channel slice of the gradient (the U-Net levels that keep their
    cat): the kernels read it through its own strides, with no copy, and dx matches the reference."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    class Copies(TorchDispatchMode):
        """Counts copies made by fastp2p's code, not by Triton's interpreter staging a kernel's arguments."""
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in ("copy_", "clone", "contiguous"):
                Copies.count += not any("triton" in frame.filename for frame in traceback.extract_stack())
            return func(*args, **(kwargs or {}))

    reference = reference_norm(mode, 4)
    fused = FusedNormAct.from_norm(copy.deepcopy(reference), "relu")
    x = layout(torch.randn(2, 4, 6, 5, device=DEVICE), True)
    x_ref, x_fused = x.double().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = F.relu(reference.double()(x_ref)), fused(x_fused)
    grad = layout(torch.randn(2, 7, 6, 5, device=DEVICE), True)[:, 2:6]  # a slice, as cat's backward gives
    y_ref.backward(grad.double())
    with Copies():
        y.backward(grad)
    assert Copies.count == 0
    atol, rtol = TOLERANCES[torch.float32]
    assert_close_verbose(x_fused.grad, x_ref.grad, atol, rtol, "dx")


def test_reflection_padding_wider_than_the_input_raises():
    fused = FusedNormAct(4, "instance", "relu", padding=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="reflection padding"):
        fused(torch.randn(1, 4, 4, 4, device=DEVICE))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_constant_input_has_zero_variance(mode, channels_last):
    """Variance 0 (never negative, no NaN). The fp32 rounding of the mean, times rstd = 1/sqrt(eps) ~ 316,
    leaves output errors ~1e-4 in both implementations, hence the looser atol."""
    x = torch.full((2, 4, 3, 5), 3.7, device=DEVICE)
    # identity: with xhat = 0 every element sits on an activation's kink, where either slope is right
    check_against_reference(tuple(x.shape), torch.float32, channels_last, mode, "identity", x=x,
                            tolerance=(3e-4, 1e-4))


@pytest.mark.parametrize("mode", ["instance", "batch_train"])
def test_large_offset_keeps_variance_accurate(mode):
    """Mean 100, std 0.1: E[x^2] - E[x]^2 in fp32 would lose about 10 % of the variance. What remains is the
    fp32 rounding of x and of the mean (ulp(100) / 0.1 ~ 1e-4 of the output), checked against fp64."""
    x = (torch.randn(2, 4, 8, 8, device=DEVICE, dtype=torch.float64) * 0.1 + 100.0).float()
    reference = reference_norm(mode, 4)
    fused = FusedNormAct.from_norm(copy.deepcopy(reference))
    assert_close_verbose(fused(x), reference.double()(x.double()), 5e-4, 0, "y")
    if mode == "batch_train":
        assert_close_verbose(fused.running_var, reference.running_var, 1e-6, 1e-4, "running_var")


@pytest.mark.parametrize("mode, message", [("instance", "more than 1 spatial element"),
                                           ("batch_train", "more than 1 value per channel")])
def test_too_few_values_raise_like_pytorch(mode, message):
    norm = reference_norm(mode, 4)
    x = torch.randn(1, 4, 1, 1, device=DEVICE)
    with pytest.raises(ValueError, match=message):
        norm(x)
    with pytest.raises(ValueError, match=message):
        FusedNormAct.from_norm(norm, "relu")(x)


def test_batch_eval_accepts_single_value():
    check_against_reference((1, 4, 1, 1), torch.float32, False, "batch_eval", "relu")


@pytest.mark.parametrize("norm", [nn.BatchNorm2d(6), nn.InstanceNorm2d(6)], ids=["batch", "instance"])
def test_state_dict_keys_match_the_replaced_norm(norm):
    fused = FusedNormAct.from_norm(norm, "leaky_relu")
    assert list(fused.state_dict()) == list(norm.state_dict())
    fresh = FusedNormAct(6, "batch" if isinstance(norm, nn.BatchNorm2d) else "instance", "relu")
    assert list(fresh.state_dict()) == list(norm.state_dict())
    fresh.load_state_dict(norm.state_dict())


def test_from_norm_shares_parameters_and_buffers():
    norm = nn.BatchNorm2d(6)
    fused = FusedNormAct.from_norm(norm, "relu")
    assert fused.weight is norm.weight and fused.bias is norm.bias
    assert fused.running_mean is norm.running_mean and fused.num_batches_tracked is norm.num_batches_tracked


def dropout_module(channels_last=False, mode="instance", activation="identity", seed=1234):
    fused = FusedNormAct.from_norm(reference_norm(mode, 16), activation, dropout=0.5).to(DEVICE)
    fused.dropout_seed.fill_(seed)
    return fused


def backward_and_compare(y_fused, y_ref, x_fused, x_ref):
    """Backpropagate one random gradient through both outputs, compare the outputs and the inputs' gradients at
    fp32 tolerances, and return those."""
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_fused.backward(grad)
    atol, rtol = TOLERANCES[torch.float32]
    assert_close_verbose(y_fused, y_ref, atol, rtol, "y")
    assert_close_verbose(x_fused.grad, x_ref.grad, atol, rtol, "dx")
    return atol, rtol


def test_dropout_mask_semantics_and_gradient():
    """Each output is 0 or 2 * (normalized activation); about half are 0; backward uses the same mask."""
    reference = reference_norm("batch_train", 16)
    fused = FusedNormAct.from_norm(copy.deepcopy(reference), "leaky_relu", dropout=0.5)
    x = torch.randn(2, 16, 16, 16, device=DEVICE).to(memory_format=torch.channels_last)
    x_ref, x_fused = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_fused = fused(x_fused)
    keep = y_fused.detach() != 0
    assert abs(keep.float().mean().item() - 0.5) < 0.02
    y_ref = F.leaky_relu(reference(x_ref), 0.2) * keep * 2.0
    atol, rtol = backward_and_compare(y_fused, y_ref, x_fused, x_ref)
    assert_close_verbose(fused.weight.grad, reference.weight.grad, atol, rtol, "dweight")
    assert_close_verbose(fused.bias.grad, reference.bias.grad, atol, rtol, "dbias")


def test_dropout_seed_reproduces_and_advances():
    fused = dropout_module(seed=77)
    x = torch.randn(2, 16, 8, 8, device=DEVICE)
    first = fused(x)
    assert fused.dropout_seed.item() == 78, "each call advances the key on device"
    second = fused(x)
    assert not torch.equal(first == 0, second == 0)
    fused.dropout_seed.fill_(77)
    assert torch.equal(fused(x), first)
    fused.dropout_seed.fill_(77)
    other_layout = fused(x.to(memory_format=torch.channels_last))
    # the mask is bitwise the same; the values may differ in the last bit, since the two layouts tile (and so
    # sum) the statistics differently (seen on CUDA, not in the interpreter)
    assert torch.equal(other_layout == 0, first == 0), "mask is layout independent"
    atol, rtol = TOLERANCES[torch.float32]
    assert_close_verbose(other_layout, first, atol, rtol, "y in the other layout")


def test_dropout_mask_is_padded_with_the_values():
    """The padded copies of an element carry its dropout draw, as when nn.Dropout runs before the pad: with the
    same key, the padded output is F.pad of the unpadded one, and the gradients agree."""
    padding = (1, 2, 2, 1)
    plain, padded = dropout_module(activation="relu", seed=5), dropout_module(activation="relu", seed=5)
    padded.padding = padding
    x = torch.randn(2, 16, 6, 5, device=DEVICE).to(memory_format=torch.channels_last)
    x_plain, x_padded = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_plain, y_padded = F.pad(plain(x_plain), padding, mode="reflect"), padded(x_padded)
    assert torch.equal(y_padded == 0, y_plain == 0)
    backward_and_compare(y_padded, y_plain, x_padded, x_plain)


def test_dropout_is_off_in_eval():
    fused = dropout_module(mode="batch_train").eval()
    x = torch.randn(2, 16, 4, 4, device=DEVICE)
    assert (fused(x) != 0).all()
