"""Each convolution of the real networks in NCHW (the reference row) and channels-last, forward + backward (weight and
input gradients), at its real input shape: the engine uses one layout for a whole network, and channels-last can lose
on some shapes (in_ch > out_ch, the decoders), so this says layer by layer which layout wins. bf16 on a GPU; fp32 on
the CPU with the small size's networks (a check that every layer runs).
"""

import copy

import torch
from torch import nn

from fastp2p import networks

# name -> (the network, its input image size)
NETS = {"paper": {"unet_256": (lambda: networks.define_G(3, 3, 64, "unet_256", "batch", use_dropout=True), 256),
                  "resnet_9blocks": (lambda: networks.define_G(3, 3, 64, "resnet_9blocks", "instance"), 256),
                  "basic_D_6ch": (lambda: networks.define_D(6, 64, "basic", 3, "batch"), 256)},
        "small": {"unet_128": (lambda: networks.define_G(3, 3, 16, "unet_128", "batch", use_dropout=True), 128),
                  "resnet_6blocks": (lambda: networks.define_G(3, 3, 16, "resnet_6blocks", "instance"), 64),
                  "basic_D_6ch": (lambda: networks.define_D(6, 16, "basic", 3, "batch"), 64)}}
BATCH_SIZES = {"paper": (1, 16), "small": (1,)}
ROUNDS = {"cuda": 20, "cpu": 3}


def conv_layers(net, in_channels, image):
    """(name, module, input shape at batch 1) of every Conv2d/ConvTranspose2d, recorded by one forward pass."""
    found = []
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: found.append((name, m, args[0].shape)))
             for name, module in net.named_modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        net.eval()(torch.zeros(1, in_channels, image, image))
    for hook in hooks:
        hook.remove()
    return found


def generate(metafunc, size, device):
    if "layer" in metafunc.fixturenames:
        layers = [(net, name, module, tuple(shape)) for net, (make, image) in NETS[size.name].items()
                  for name, module, shape in conv_layers(make(), 6 if net.endswith("6ch") else 3, image)]
        metafunc.parametrize("layer", layers, ids=[f"{net}-{name}" for net, name, _, _ in layers])
        metafunc.parametrize("batch_size", BATCH_SIZES[size.name], ids=[f"bs{b}" for b in BATCH_SIZES[size.name]])
        metafunc.parametrize("row", ["nchw", "nhwc"])


def test_layer(timed, benchmark, layer, batch_size, row, device):
    net, name, module, shape = layer
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    layout = torch.channels_last if row == "nhwc" else torch.contiguous_format
    conv = copy.deepcopy(module).to(device=device, dtype=dtype, memory_format=layout)  # the reference row's is kept
    x = torch.randn((batch_size, *shape[1:]), device=device, dtype=dtype).to(memory_format=layout).requires_grad_()
    grad = torch.randn_like(conv(x))
    if not benchmark.disabled:
        for _ in range(5 if device.type == "cuda" else 1):
            conv(x).backward(grad)
    timed(lambda: conv(x).backward(grad), group=f"layers {net} bs{batch_size} {name}", row=row,
          reference=row == "nchw", units=1, unit="calls", rounds=ROUNDS[device.type], kind=type(module).__name__,
          input=[batch_size, *shape[1:]], out_channels=module.out_channels, dtype=str(dtype))
    assert torch.isfinite(x.grad).all(), f"{net} {name}: non-finite input gradient"
