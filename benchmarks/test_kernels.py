"""The fastp2p Triton kernels against the PyTorch sequences they replace, at the real layer shapes of unet_256
(BatchNorm, skip concatenations) and resnet_9blocks (InstanceNorm, reflection pads), the conv + norm layers and the
PatchGAN losses: forward, backward and (on a GPU) the forward replayed from a CUDA graph under no_grad, which is GPU
time without the host's launch overhead. Each group is one case and direction; its rows are ``torch`` (the
reference) and ``fused``. GB/s counts the bytes an ideal kernel moves (forward: read x, write y; backward: read x and
dy, write dx, with the pad where the norm writes it; pads: read one side, write the other; losses: read the inputs,
write the gradients), against the device-to-device copy bandwidth. On the CPU the kernels run in Triton's interpreter
(small size): a check that every case runs, not a figure.
"""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from benchmarks import rows

# unet_256 (ngf 64) at 256^2: (C, H, W, activation, dropout) of each BatchNorm
UNET_NORMS = [
    (128, 64, 64, "leaky_relu", 0.0), (256, 32, 32, "leaky_relu", 0.0), (512, 16, 16, "leaky_relu", 0.0),
    (512, 8, 8, "leaky_relu", 0.0), (512, 2, 2, "leaky_relu", 0.0), (512, 2, 2, "identity", 0.5),
    (512, 8, 8, "identity", 0.5), (256, 32, 32, "relu", 0.0), (128, 64, 64, "relu", 0.0), (64, 128, 128, "relu", 0.0)]
# resnet_9blocks (ngf 64) at 256^2: (C, H, W, activation, dropout, the reflection pad the norm writes, whether it also
# adds the block's skip and writes its output plain and padded)
RESNET_NORMS = [(64, 256, 256, "relu", 0.0, 0, False), (128, 128, 128, "relu", 0.0, 0, False),
                (256, 64, 64, "relu", 0.0, 0, False), (256, 64, 64, "identity", 0.0, 0, False),
                (256, 64, 64, "relu", 0.0, 1, False), (64, 256, 256, "relu", 0.0, 3, False),
                (256, 64, 64, "identity", 0.0, 1, True)]
UNET_SKIPS = [(128, 64, 64, 0.0), (256, 32, 32, 0.0), (512, 16, 16, 0.0), (512, 8, 8, 0.5), (512, 2, 2, 0.5)]
RESNET_PADS = [(3, 256, 256, 3), (256, 64, 64, 1), (64, 256, 256, 3)]
# (model, C_in, C_out, H, W, kernel, stride, padding, reflect, transposed, norm, activation)
CONV_LAYERS = [
    ("unet_256", 64, 128, 128, 128, 4, 2, 1, False, False, "batch", "leaky_relu"),
    ("unet_256", 256, 512, 32, 32, 4, 2, 1, False, False, "batch", "leaky_relu"),
    ("unet_256", 512, 512, 8, 8, 4, 2, 1, False, False, "batch", "leaky_relu"),
    ("unet_256", 1024, 512, 8, 8, 4, 2, 1, False, True, "batch", "relu"),
    ("unet_256", 256, 64, 64, 64, 4, 2, 1, False, True, "batch", "relu"),
    ("basic_D", 64, 128, 128, 128, 4, 2, 1, False, False, "instance", "leaky_relu"),
    ("basic_D", 256, 512, 32, 32, 4, 1, 1, False, False, "instance", "leaky_relu"),
    ("resnet_9blocks", 3, 64, 256, 256, 7, 1, 3, True, False, "instance", "relu"),
    ("resnet_9blocks", 64, 128, 256, 256, 3, 2, 1, False, False, "instance", "relu"),
    ("resnet_9blocks", 256, 256, 64, 64, 3, 1, 1, True, False, "instance", "relu"),
    ("resnet_9blocks", 128, 64, 128, 128, 3, 2, 1, False, True, "instance", "relu")]
PATCH_SHAPE, IMAGE_SHAPE = (1, 30, 30), (3, 256, 256)  # the 70x70 PatchGAN's output and the image at 256^2
SMALL = dict(  # one tiny shape per op: what the interpreter runs in seconds
    norms=[("smoke", "batch", (8, 4, 4), "leaky_relu", 0.5, 0, False),
           ("smoke", "instance", (8, 4, 4), "relu", 0.0, 1, False),
           ("smoke", "instance", (8, 4, 4), "identity", 0.0, 1, True)],
    skips=[(8, 4, 4, 0.5)], pads=[(8, 6, 6, 3)], image=(3, 8, 8),
    convs=[("smoke", 4, 8, 6, 6, 4, 2, 1, False, False, "batch", "leaky_relu"),
           ("smoke", 4, 4, 5, 5, 3, 1, 1, True, False, "instance", "relu"),
           ("smoke", 8, 4, 3, 3, 4, 2, 1, False, True, "instance", "relu")])
ROUNDS = {"cuda": 15, "cpu": 3}  # each round as many calls as its time floor takes (benchmarks/conftest.py)


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    model: str
    spec: tuple
    batch: int
    dtype: str
    layout: str

    def __str__(self):
        spec = "-".join("x".join(map(str, part)) if isinstance(part, tuple) else str(part) for part in self.spec)
        return f"{self.op}-{self.model}-b{self.batch}-{spec}-{self.dtype}-{self.layout}"


def cases(size):
    paper = size.name == "paper"
    batches, dtypes = ((1, 16), ("bfloat16", "float32")) if paper else ((2,), ("float32",))
    norms = ([("unet_256", "batch", (c, h, w), a, d, 0, False) for c, h, w, a, d in UNET_NORMS]
             + [("resnet_9blocks", "instance", (c, h, w), a, d, p, s) for c, h, w, a, d, p, s in RESNET_NORMS]
             if paper else SMALL["norms"])
    found = []
    for batch in batches:
        for dtype in dtypes:
            for layout in ("nhwc", "nchw"):
                found += [Case("norm_act", spec[0], spec[1:], batch, dtype, layout) for spec in norms]
                found += [Case("unet_skip", "unet_256", spec, batch, dtype, layout)
                          for spec in (UNET_SKIPS if paper else SMALL["skips"])]
                found += [Case("reflection_pad", "resnet_9blocks", spec, batch, dtype, layout)
                          for spec in (RESNET_PADS if paper else SMALL["pads"])]
            found += [Case("gan_loss", "patchgan", (mode,), batch, dtype, "nchw") for mode in ("lsgan", "vanilla")]
            found += [Case("l1_loss", "generator", IMAGE_SHAPE if paper else SMALL["image"], batch, dtype, "nchw")]
            found += [Case("conv_norm", spec[0], spec[1:] + (variant,), batch, dtype, "nhwc")
                      for spec in (CONV_LAYERS if paper else SMALL["convs"]) for variant in ("epilogue", "prologue")]
    return found


def generate(metafunc, size, device):
    if "case" in metafunc.fixturenames:
        found = cases(size)
        metafunc.parametrize("case", found, ids=[str(case) for case in found])
        metafunc.parametrize("direction", ["fwd", "bwd"] + (["fwd_graph"] if device.type == "cuda" else []))
        metafunc.parametrize("row", ["torch", "fused"])


def tensor(shape, case, device):
    x = torch.randn(shape, device=device, dtype=getattr(torch, case.dtype))
    return (x.to(memory_format=torch.channels_last) if case.layout == "nhwc" else x).requires_grad_()


def norm_pair(case, device, kernels):
    kind, (channels, height, width), activation, dropout, pad, skip = case.spec
    shape = (case.batch, channels, height, width)
    norm = (torch.nn.BatchNorm2d if kind == "batch" else torch.nn.InstanceNorm2d)(channels).to(device).train()
    layers = [norm] + {"relu": [torch.nn.ReLU()], "leaky_relu": [torch.nn.LeakyReLU(0.2)], "identity": []}[activation]
    layers += ([torch.nn.Dropout(dropout)] if dropout else []) + ([torch.nn.ReflectionPad2d(pad)] if pad and not skip
                                                                   else [])
    reference = torch.nn.Sequential(*layers)
    fused = kernels.FusedNormAct.from_norm(copy.deepcopy(norm), activation, dropout=dropout)
    fused.padding, fused.keep_unpadded = ((pad,) * 4 if pad else None), skip
    x, residual = tensor(shape, case, device), tensor(shape, case, device)
    if skip:  # both return the padded output; the fused one writes the plain one too
        pair = (lambda: F.pad(reference(x) + residual, (pad,) * 4, mode="reflect"),
                lambda: fused(x, residual=residual)[1])
    else:
        pair = (lambda: reference(x)), (lambda: fused(x))
    nbytes = x.numel() * x.element_size()
    out_bytes = nbytes * (height + 2 * pad) * (width + 2 * pad) // (height * width)
    skip_bytes = 2 * nbytes if skip else 0
    from fastp2p.kernels import norm_act

    return (*pair, nbytes + out_bytes + skip_bytes, 2 * nbytes + out_bytes + skip_bytes // 2,
            dict(plan=norm_act.reduction_plan(x, per_sample=kind == "instance")))


def skip_pair(case, device, kernels):
    channels, height, width, dropout = case.spec
    down, up = (torch.nn.BatchNorm2d(channels).to(device).train() for _ in range(2))
    up_tail = torch.nn.Dropout(dropout) if dropout else torch.nn.Identity()
    opening = kernels.FusedNormAct.from_norm(copy.deepcopy(down), "leaky_relu")
    closing = kernels.FusedNormAct.from_norm(copy.deepcopy(up), dropout=dropout)
    opening.skip_width, closing.closes_skip = channels, True
    x, h = (tensor((case.batch, channels, height, width), case, device) for _ in range(2))

    def torch_fn():
        d = down(x)
        return F.leaky_relu(d, 0.2), F.relu(torch.cat([d, up_tail(up(h))], 1))

    def fused_fn():
        y, opened = opening(x)
        return y, closing(h, skip=opened)

    nbytes = x.numel() * x.element_size()  # fwd: read x, h, write lrelu(d) and the 2C cat; bwd: 4 reads, 2 writes
    return torch_fn, fused_fn, 5 * nbytes, 7 * nbytes, {}


def pad_pair(case, device, kernels):
    channels, height, width, pad = case.spec
    x = tensor((case.batch, channels, height, width), case, device)
    fused = kernels.FusedReflectionPad2d(pad)
    nbytes = x.numel() * x.element_size() * (1 + (height + 2 * pad) * (width + 2 * pad) / (height * width))
    return lambda: F.pad(x, (pad,) * 4, mode="reflect"), lambda: fused(x), nbytes, nbytes, {}


def gan_loss_pair(case, device, kernels):
    (mode,) = case.spec
    pred = tensor((case.batch, *PATCH_SHAPE), case, device)
    torch_loss = F.mse_loss if mode == "lsgan" else F.binary_cross_entropy_with_logits
    nbytes = pred.numel() * pred.element_size()
    return (lambda: torch_loss(pred, torch.ones_like(pred)), lambda: kernels.gan_loss(pred, True, mode), 2 * nbytes,
            2 * nbytes, {})


def l1_pair(case, device, kernels):
    a = tensor((case.batch, *case.spec), case, device)
    b = tensor((case.batch, *case.spec), case, device).detach()
    nbytes = a.numel() * a.element_size()
    return lambda: F.l1_loss(a, b), lambda: kernels.l1_loss(a, b), 3 * nbytes, nbytes, {}


def conv_pair(case, device, kernels):
    """epilogue: cuDNN conv + the fused norm against the Triton conv writing the norm's statistics (ConvNorm);
    prologue: the fused norm + cuDNN conv against the Triton conv normalizing its input as it loads it."""
    from fastp2p.kernels.conv import Prologue

    c_in, c_out, h, w, k, stride, padding, reflect, transposed, kind, activation, variant = case.spec
    dtype = getattr(torch, case.dtype)
    make_norm = torch.nn.BatchNorm2d if kind == "batch" else torch.nn.InstanceNorm2d
    conv = (torch.nn.ConvTranspose2d(c_in, c_out, k, stride, padding, stride - 1 if k % 2 else 0, bias=False)
            if transposed else torch.nn.Conv2d(c_in, c_out, k, stride, 0 if reflect else padding, bias=False))
    conv, norm, in_norm = conv.to(device), make_norm(c_out).to(device), make_norm(c_in).to(device)
    pad = torch.nn.ReflectionPad2d(padding) if reflect else torch.nn.Identity()
    x = torch.randn(case.batch, c_in, h, w, device=device).to(memory_format=torch.channels_last).requires_grad_()
    reflect_pad = padding if reflect else 0
    if variant == "epilogue":
        torch_norm = kernels.FusedNormAct.from_norm(copy.deepcopy(norm), activation)
        conv_norm = kernels.ConvNorm(copy.deepcopy(norm), activation)
        fused_conv = kernels.FusedConv(conv, reflect_pad=reflect_pad, norm=conv_norm)
        pair = (lambda: torch_norm(conv(pad(x)))), (lambda: conv_norm(*fused_conv(x)))
    else:
        in_fused_norm = kernels.FusedNormAct.from_norm(in_norm, activation)
        per_sample = kind == "instance"
        var, mean = torch.var_mean(x.detach(), (2, 3) if per_sample else (0, 2, 3), correction=0)
        prologue = Prologue(mean.reshape(-1, c_in), torch.rsqrt(var + 1e-5).reshape(-1, c_in),
                            None if per_sample else in_norm.weight, None if per_sample else in_norm.bias,
                            0.2 if activation == "leaky_relu" else 0.0, per_sample, True)
        fused_conv = kernels.FusedConv(conv, reflect_pad=reflect_pad)
        pair = (lambda: conv(pad(in_fused_norm(x)))), (lambda: fused_conv(x, prologue))

    torch_fn, fused_fn = map(torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32), pair)
    with torch.no_grad():
        out = torch_fn()
    nbytes = (x.numel() + out.numel()) * dtype.itemsize  # read the input, write the output
    return torch_fn, fused_fn, nbytes, 2 * nbytes, {}


PAIRS = dict(norm_act=norm_pair, unet_skip=skip_pair, reflection_pad=pad_pair, gan_loss=gan_loss_pair,
             l1_loss=l1_pair, conv_norm=conv_pair)


@pytest.fixture(scope="module")
def kernels():
    import fastp2p.kernels

    return fastp2p.kernels


@pytest.fixture(scope="module")
def copy_gbps(device):
    return rows.copy_gbps(device)


def as_call(direction, fn, device):
    """What one call of the group times: the forward, its backward (a gradient for each output), or the forward
    replayed from a CUDA graph (skipped where the capture fails)."""
    if direction == "fwd":
        return fn
    if direction == "fwd_graph":
        from fastp2p.engine.cuda_graph import capture_after_warmup

        try:
            with torch.no_grad():
                graph, _ = capture_after_warmup(fn, torch.cuda.Stream(device))
        except Exception as error:  # noqa: BLE001 - a capture failure is a result; the eager rows stay usable
            torch.cuda.synchronize(device)
            pytest.skip(f"graph capture failed: {type(error).__name__}: {error}")
        return graph.replay
    out = fn()
    outs = out if isinstance(out, tuple) else (out,)
    grads = [torch.randn_like(o) if o.dim() else torch.ones_like(o) for o in outs]
    inputs = leaves(outs)

    def backward():
        for leaf in inputs:  # a fresh gradient each call, as a training step's: no accumulation into the last one
            leaf.grad = None
        torch.autograd.backward(outs, grads, retain_graph=True)

    return backward


def leaves(outs):
    """The tensors whose .grad a backward from ``outs`` writes."""
    found, seen, stack = [], set(), [out.grad_fn for out in outs]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            found.append(node.variable)
        stack.extend(following for following, _ in node.next_functions)
    return found


def test_kernel(timed, benchmark, kernels, copy_gbps, case, direction, row, device):
    torch.manual_seed(0)
    torch_fn, fused_fn, fwd_bytes, bwd_bytes, info = PAIRS[case.op](case, device, kernels)
    call = as_call(direction, torch_fn if row == "torch" else fused_fn, device)
    timed(call, group=f"kernels {case} {direction}", row=row, reference=row == "torch", units=1, unit="calls",
          rounds=ROUNDS[device.type], op=case.op, direction=direction, interpreter=device.type != "cuda", **info)
    if not benchmark.disabled:
        nbytes = bwd_bytes if direction == "bwd" else fwd_bytes
        gbps = nbytes * benchmark.extra_info["calls_per_s"] / 1e9
        benchmark.extra_info.update(bytes=nbytes, gb_per_s=gbps, of_copy_roof=gbps / copy_gbps, copy_gbps=copy_gbps)
