"""Each convolution of the real networks timed in NCHW and in channels-last (forward + backward).

The engine uses one layout for a whole network, but channels-last convolutions can
lose on some shapes (in_ch > out_ch, the U-Net and ResNet decoders); this table says, layer by
layer at the real shapes, which layout wins, before any per-layer layout is built.

    python benchmarks/bench_layers.py --batch_sizes 1 16 --out benchmarks/results
"""

import argparse
import datetime
import json
import os

import torch
from torch import nn

from fastp2p import networks

NETS = {
    "unet_256": lambda: networks.define_G(3, 3, 64, "unet_256", "batch", use_dropout=True),
    "resnet_9blocks": lambda: networks.define_G(3, 3, 64, "resnet_9blocks", "instance"),
    "basic_D_6ch": lambda: networks.define_D(6, 64, "basic", 3, "batch"),
}


def conv_layers(net, in_channels, size, batch_size, device):
    """(name, module, input shape) of every Conv2d/ConvTranspose2d, recorded by one forward pass."""
    found = []
    hooks = [module.register_forward_hook(lambda m, args, out, name=name: found.append((name, m, args[0].shape)))
             for name, module in net.named_modules() if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        net(torch.zeros(batch_size, in_channels, size, size, device=device))
    for hook in hooks:
        hook.remove()
    return found


def time_layer(module, shape, channels_last, dtype, repeats):
    """Median ms of forward + backward (weight and input gradients) of one layer, CUDA events."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    layer = module.to(dtype=dtype, memory_format=layout)
    x = torch.randn(shape, device="cuda", dtype=dtype).to(memory_format=layout).requires_grad_()
    grad = torch.randn_like(layer(x))
    times = []
    for i in range(repeats + 5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        layer(x).backward(grad)
        end.record()
        torch.cuda.synchronize()
        if i >= 5:
            times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_layers.py times cuDNN layouts and needs a CUDA device")
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    rows = []
    for net_name in args.nets:
        net = NETS[net_name]().to(device)
        in_channels = 6 if net_name.endswith("6ch") else 3
        for batch_size in args.batch_sizes:
            for name, module, shape in conv_layers(net, in_channels, 256, batch_size, device):
                nchw = time_layer(module, shape, False, torch.bfloat16, args.repeats)
                nhwc = time_layer(module, shape, True, torch.bfloat16, args.repeats)
                row = dict(net=net_name, batch_size=batch_size, layer=name, kind=type(module).__name__,
                           input=list(shape), out_channels=module.out_channels, nchw_ms=round(nchw, 4),
                           nhwc_ms=round(nhwc, 4), nhwc_speedup=round(nchw / nhwc, 3))
                rows.append(row)
                print(json.dumps(row), flush=True)
            net.to(dtype=torch.float32, memory_format=torch.contiguous_format)
    if args.out:
        stem = os.path.join(args.out, f"layers_{torch.cuda.get_device_name().replace(' ', '-').lower()}_"
                                      f"{datetime.date.today():%Y%m%d}")
        meta = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                    cudnn=torch.backends.cudnn.version(), dtype="bfloat16", rows=rows)
        with open(stem + ".json", "w") as f:
            json.dump(meta, f, indent=1)
        lines = ["| net | bs | layer | kind | input | out ch | NCHW ms | NHWC ms | NHWC speed-up |",
                 "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['net']} | {r['batch_size']} | {r['layer']} | {r['kind']} | {'x'.join(map(str, r['input']))} "
                  f"| {r['out_channels']} | {r['nchw_ms']} | {r['nhwc_ms']} | {r['nhwc_speedup']} |" for r in rows]
        with open(stem + ".md", "w") as f:
            f.write(f"# Conv layers, NCHW vs channels-last, bf16 fwd+bwd ({meta['device']}, torch {meta['torch']}, "
                    f"cuDNN {meta['cudnn']})\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
