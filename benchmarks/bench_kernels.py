"""Microbenchmark of the fastp2p Triton kernels against the PyTorch sequences they replace.

Times, at the real layer shapes of unet_256 (BatchNorm, skip concatenations) and resnet_9blocks (InstanceNorm,
reflection pads) and for the PatchGAN losses: fused op vs torch, forward and backward, batch 1 and 16, bf16 and
fp32, NCHW and NHWC, with triton.testing.do_bench (median and 20/80 % quantiles). Bandwidth counts the bytes an
ideal kernel must move (forward: read x, write y; backward: read x and dy, write dx, with y and dy padded where
the norm writes the pad; pads: read one side, write the other; losses: read the inputs, write the gradients) and
is compared with the measured device-to-device copy bandwidth (copy_ of 1 GiB, read + write counted).

    python benchmarks/bench_kernels.py --out benchmarks/results     # on a CUDA machine
    python benchmarks/bench_kernels.py --smoke --out /tmp/bench      # one tiny shape, CPU interpreter or GPU

Writes kernels_<gpu>_<yyyymmdd>.json (device, versions, commit, command, rows) and .md (a table) into --out.
"""

import argparse
import copy
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

# unet_256 (ngf 64) at 256^2: (C, H, W, activation, dropout) of each BatchNorm; encoder norms feed a LeakyReLU,
# decoder norms a ReLU, and the three innermost decoder levels carry dropout.
UNET_NORMS = [
    (128, 64, 64, "leaky_relu", 0.0), (256, 32, 32, "leaky_relu", 0.0), (512, 16, 16, "leaky_relu", 0.0),
    (512, 8, 8, "leaky_relu", 0.0), (512, 2, 2, "leaky_relu", 0.0),
    (512, 2, 2, "identity", 0.5), (512, 8, 8, "identity", 0.5),
    (256, 32, 32, "relu", 0.0), (128, 64, 64, "relu", 0.0), (64, 128, 128, "relu", 0.0),
]
# resnet_9blocks (ngf 64) at 256^2: InstanceNorm + ReLU at the stem, downsampling and first conv of each block;
# the second norm of each block has no activation. Last fields: the reflection pad the fused path writes with the
# norm (each block's first norm feeds a pad of 1, the last upsampling norm the output layer's pad of 3), and
# whether the norm also adds the block's skip and writes its output both plain and padded (a block's last norm
# feeding the next block), against torch's norm, add and pad.
RESNET_NORMS = [(64, 256, 256, "relu", 0.0, 0, False), (128, 128, 128, "relu", 0.0, 0, False),
                (256, 64, 64, "relu", 0.0, 0, False), (256, 64, 64, "identity", 0.0, 0, False),
                (256, 64, 64, "relu", 0.0, 1, False), (64, 256, 256, "relu", 0.0, 3, False),
                (256, 64, 64, "identity", 0.0, 1, True)]
# unet_256 (ngf 64) at 256^2: (C, H, W, dropout) of the levels whose skip concatenation the norms write (see
# fusion.fuse_unet_skips): the outer level's down norm (LeakyReLU) opens it, the level's last norm closes it, against
# torch's two norms, LeakyReLU, cat and ReLU.
UNET_SKIPS = [(128, 64, 64, 0.0), (256, 32, 32, 0.0), (512, 16, 16, 0.0), (512, 8, 8, 0.5), (512, 2, 2, 0.5)]
# resnet_9blocks (ngf 64) at 256^2: (C, H, W, pad) of each ReflectionPad2d: the input image, the 18 block
# pads, and the pad before the last 7x7 conv
RESNET_PADS = [(3, 256, 256, 3), (256, 64, 64, 1), (64, 256, 256, 3)]
# --conv: (model, C_in, C_out, H, W of the input, kernel, stride, padding, reflect, transposed, norm, activation) of
# each conv + norm shape at 256^2, the PatchGAN (ndf 64) at its 256^2 input's sizes
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
    ("resnet_9blocks", 128, 64, 128, 128, 3, 2, 1, False, True, "instance", "relu"),
]
PATCH_SHAPE = (1, 30, 30)  # basic 70x70 PatchGAN output at 256^2
IMAGE_SHAPE = (3, 256, 256)


ELEMENTWISE_OPS = ("norms", "skips", "pads", "losses")
"""the row groups of the fused norm, U-Net skip, reflection pad and loss kernels, in the order they run"""
NORM_MODELS = ("unet_256", "resnet_9blocks")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results", help="folder for the .json and .md results")
    parser.add_argument("--smoke", action="store_true",
                        help="one tiny shape per op (runs on CPU in Triton's interpreter), to check the script")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--conv", action="store_true",
                        help="only the conv + norm rows (CONV_LAYERS): cuDNN conv + the fused norm against the Triton "
                             "conv with statistics epilogue (+ its norm apply), and a conv taking the norm + "
                             "activation of its input on load against the fused norm + cuDNN conv")
    parser.add_argument("--ops", nargs="+", choices=ELEMENTWISE_OPS, default=list(ELEMENTWISE_OPS),
                        help="which of the norm/pad/loss row groups to run (not with --conv); e.g. `--ops norms "
                             "--batches 1` compares the channels-last and NCHW norms where batch 1 is launch-bound")
    parser.add_argument("--models", nargs="+", choices=NORM_MODELS, default=list(NORM_MODELS),
                        help="whose norm layers the norms rows take: the U-Net's BatchNorms, the ResNet's InstanceNorms")
    parser.add_argument("--graph", action="store_true",
                        help="also time each forward replayed from a CUDA graph (no_grad): GPU time without the "
                             "host's launch overhead, which bounds the eager timings of small layers")
    return parser.parse_args()


def make_timer(device):
    """do_bench on CUDA (median, p20, p80 in ms); a plain perf_counter loop in the interpreter."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: tuple(triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=100))

    def cpu_timer(fn):
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times), min(times), max(times)

    return cpu_timer


def make_graph_timer(device, enabled):
    """Forward under no_grad captured in a CUDA graph (triton.testing.do_bench_cudagraph); None if off."""
    if not enabled or device.type != "cuda":
        return None
    import triton.testing

    def graph_timer(fn):
        try:
            with torch.no_grad():
                return tuple(triton.testing.do_bench_cudagraph(fn, rep=50, quantiles=[0.5, 0.2, 0.8]))
        except Exception as error:  # a capture failure leaves the eager timings usable
            print(f"graph capture failed: {type(error).__name__}: {error}", flush=True)
            torch.cuda.synchronize()
            return None

    return graph_timer


def copy_bandwidth(device, timer, nbytes):
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    median_ms, _, _ = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (median_ms * 1e-3) / 1e9


def torch_norm_sequence(norm, activation, dropout, pad):
    layers = [norm]
    if activation == "relu":
        layers.append(torch.nn.ReLU())
    elif activation == "leaky_relu":
        layers.append(torch.nn.LeakyReLU(0.2))
    if dropout:
        layers.append(torch.nn.Dropout(dropout))
    if pad:
        layers.append(torch.nn.ReflectionPad2d(pad))
    return torch.nn.Sequential(*layers)


def norm_cases(args, smoke):
    if smoke:
        yield "smoke", "batch", (2, 8, 4, 4), "leaky_relu", 0.5, 0, False
        yield "smoke", "instance", (2, 8, 4, 4), "relu", 0.0, 1, False
        yield "smoke", "instance", (2, 8, 4, 4), "identity", 0.0, 1, True
        return
    for batch in args.batches:
        if "unet_256" in args.models:
            for channels, height, width, activation, dropout in UNET_NORMS:
                yield "unet_256", "batch", (batch, channels, height, width), activation, dropout, 0, False
        if "resnet_9blocks" in args.models:
            for channels, height, width, activation, dropout, pad, skip in RESNET_NORMS:
                yield "resnet_9blocks", "instance", (batch, channels, height, width), activation, dropout, pad, skip


def bench_pair(timer, torch_fn, fused_fn, grad_to_none, graph_timer=None):
    """Forward and backward timings (median, p20, p80) of both providers; forward from a CUDA graph too.
    A provider may return a tuple of outputs: the backward then takes a gradient for each."""
    results = {}
    for provider, fn in (("torch", torch_fn), ("fused", fused_fn)):
        out = fn()
        outs = out if isinstance(out, tuple) else (out,)
        grads = [torch.randn_like(o) if o.dim() else torch.ones_like(o) for o in outs]
        results[provider, "fwd"] = timer(fn)

        def backward():
            for tensor in grad_to_none:
                tensor.grad = None
            torch.autograd.backward(outs, grads, retain_graph=True)

        results[provider, "bwd"] = timer(backward)
        results[provider, "fwd_graph"] = graph_timer(fn) if graph_timer else None  # after eager: compiled
    return results


def make_row(op, model, shape, dtype, layout, variant, results, fwd_bytes, bwd_bytes, roof):
    rows = []
    for direction, nbytes in (("fwd", fwd_bytes), ("bwd", bwd_bytes)):
        torch_ms, fused_ms = results["torch", direction], results["fused", direction]
        fused_gbps = nbytes / (fused_ms[0] * 1e-3) / 1e9
        rows.append(dict(
            op=op, model=model, shape=list(shape), dtype=dtype, layout=layout, variant=variant, direction=direction,
            bytes=nbytes, torch_ms=torch_ms[0], torch_ms_p20=torch_ms[1], torch_ms_p80=torch_ms[2],
            fused_ms=fused_ms[0], fused_ms_p20=fused_ms[1], fused_ms_p80=fused_ms[2],
            speedup=torch_ms[0] / fused_ms[0], fused_gbps=fused_gbps,
            torch_gbps=nbytes / (torch_ms[0] * 1e-3) / 1e9, fused_fraction_of_copy=fused_gbps / roof))
        graph_torch = results.get(("torch", direction + "_graph"))
        graph_fused = results.get(("fused", direction + "_graph"))
        if graph_torch and graph_fused:
            rows[-1].update(torch_graph_ms=graph_torch[0], fused_graph_ms=graph_fused[0],
                            graph_speedup=graph_torch[0] / graph_fused[0],
                            fused_graph_gbps=nbytes / (graph_fused[0] * 1e-3) / 1e9,
                            fused_graph_fraction_of_copy=nbytes / (graph_fused[0] * 1e-3) / 1e9 / roof)
    return rows


def progress(rows):
    """One line per row as it is measured, so a run cut short still shows what it got."""
    for row in rows:
        print(f"{row['op']} {row['model']} {'x'.join(map(str, row['shape']))} {row['dtype']} {row['layout']} "
              f"{row['variant']} {row['direction']}: torch {row['torch_ms']:.4f} ms, fused {row['fused_ms']:.4f} ms, "
              f"{row['speedup']:.2f}x, {row['fused_gbps']:.0f} GB/s" + (
                  f"; graph: torch {row['torch_graph_ms']:.4f} ms, fused {row['fused_graph_ms']:.4f} ms, "
                  f"{row['graph_speedup']:.2f}x, {100 * row['fused_graph_fraction_of_copy']:.0f}% of copy"
                  if "fused_graph_ms" in row else ""), flush=True)


def bench_norms(args, device, timer, roof, fused_norm_act, graph_timer=None):
    from fastp2p.kernels import norm_act  # Triton's modules load after main() has chosen the interpreter or not

    rows = []
    for model, kind, shape, activation, dropout, pad, skip in norm_cases(args, args.smoke):
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for layout in ("nhwc", "nchw"):
                norm = (torch.nn.BatchNorm2d(shape[1]) if kind == "batch" else torch.nn.InstanceNorm2d(shape[1]))
                norm = norm.to(device).train()
                reference = torch_norm_sequence(norm, activation, dropout, 0 if skip else pad)
                fused = fused_norm_act.from_norm(copy.deepcopy(norm), activation, dropout=dropout)
                fused.padding, fused.keep_unpadded = ((pad,) * 4 if pad else None), skip
                x, residual = (torch.randn(shape, device=device, dtype=dtype) for _ in range(2))
                if layout == "nhwc":
                    x, residual = (t.to(memory_format=torch.channels_last) for t in (x, residual))
                x.requires_grad_()
                residual.requires_grad_(skip)
                params = [x, residual, *norm.parameters(), *fused.parameters()]
                if skip:  # both return the padded output; the fused one writes the plain one too
                    torch_fn = lambda: F.pad(reference(x) + residual, (pad,) * 4, mode="reflect")  # noqa: E731
                    fused_fn = lambda: fused(x, residual=residual)[1]  # noqa: E731
                else:
                    torch_fn, fused_fn = (lambda: reference(x)), (lambda: fused(x))
                results = bench_pair(timer, torch_fn, fused_fn, params, graph_timer)
                nbytes = x.numel() * x.element_size()
                out_bytes = nbytes * (shape[2] + 2 * pad) * (shape[3] + 2 * pad) // (shape[2] * shape[3])
                variant = (f"{kind}_train+{activation}" + (f"+dropout{dropout}" if dropout else "")
                           + ("+skip+plain" if skip else "") + (f"+pad{pad}" if pad else ""))
                skip_bytes = 2 * nbytes if skip else 0  # forward: read the skip, write y; backward: write its grad
                plan = norm_act.reduction_plan(x, per_sample=kind == "instance")
                rows += [dict(row, plan=plan) for row in make_row(
                    "norm_act", model, shape, dtype_name, layout, variant, results,
                    nbytes + out_bytes + skip_bytes, 2 * nbytes + out_bytes + skip_bytes // 2, roof)]
                progress(rows[-2:])
    return rows


def conv_cases(args):
    if args.smoke:
        yield "smoke", 4, 8, 6, 6, 4, 2, 1, False, False, "batch", "leaky_relu"
        yield "smoke", 4, 4, 5, 5, 3, 1, 1, True, False, "instance", "relu"
        yield "smoke", 8, 4, 3, 3, 4, 2, 1, False, True, "instance", "relu"
        return
    yield from CONV_LAYERS


def bench_convs(args, device, timer, roof, graph_timer=None):
    """Per conv + norm shape, batch and dtype (NHWC, training mode), two rows forward and backward:
    - epilogue: torch = cuDNN conv, then the fused norm + activation; fused = the Triton conv writing the norm's
      statistics as it writes its output, then the norm + activation applied from them (ConvNorm);
    - prologue: torch = the fused norm + activation of the conv's pre-norm input, then the cuDNN conv; fused = the
      Triton conv normalizing and activating that input as it loads it (statistics given)."""
    from fastp2p.kernels import ConvNorm, FusedConv, FusedNormAct
    from fastp2p.kernels.conv import Prologue

    rows = []
    for model, c_in, c_out, h, w, k, stride, padding, reflect, transposed, kind, activation in conv_cases(args):
        for batch in ([2] if args.smoke else args.batches):
            for dtype_name in args.dtypes:
                dtype = getattr(torch, dtype_name)
                make_norm = torch.nn.BatchNorm2d if kind == "batch" else torch.nn.InstanceNorm2d
                output_padding = stride - 1 if k % 2 else 0  # the ResNet's 3x3 up conv doubles the size as the 4x4
                conv = (torch.nn.ConvTranspose2d(c_in, c_out, k, stride, padding, output_padding, bias=False)
                        if transposed else
                        torch.nn.Conv2d(c_in, c_out, k, stride, 0 if reflect else padding, bias=False))
                conv, norm, in_norm = conv.to(device), make_norm(c_out).to(device), make_norm(c_in).to(device)
                pad = torch.nn.ReflectionPad2d(padding) if reflect else torch.nn.Identity()
                x = torch.randn(batch, c_in, h, w, device=device).to(memory_format=torch.channels_last)
                x.requires_grad_()
                autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
                torch_norm = FusedNormAct.from_norm(copy.deepcopy(norm), activation)
                conv_norm = ConvNorm(copy.deepcopy(norm), activation)
                fused_conv = FusedConv(conv, reflect_pad=padding if reflect else 0, norm=conv_norm)
                in_fused_norm = FusedNormAct.from_norm(in_norm, activation)
                slope = 0.2 if activation == "leaky_relu" else 0.0
                per_sample = kind == "instance"
                dims = (2, 3) if per_sample else (0, 2, 3)
                var, mean = torch.var_mean(x.detach(), dims, correction=0)
                prologue = Prologue(mean.reshape(-1, c_in), torch.rsqrt(var + 1e-5).reshape(-1, c_in),
                                    in_norm.weight if not per_sample else None,
                                    in_norm.bias if not per_sample else None, slope, per_sample, True)
                fused_conv_in = FusedConv(conv, reflect_pad=padding if reflect else 0)

                def with_autocast(fn):
                    def run():
                        with autocast:
                            return fn()
                    return run

                cases = {
                    "epilogue": (lambda: torch_norm(conv(pad(x))), lambda: conv_norm(*fused_conv(x))),
                    "prologue": (lambda: conv(pad(in_fused_norm(x))), lambda: fused_conv_in(x, prologue)),
                }
                params = [x, conv.weight, *norm.parameters(), *in_norm.parameters()]
                for variant, (torch_fn, fused_fn) in cases.items():
                    results = bench_pair(timer, with_autocast(torch_fn), with_autocast(fused_fn), params, graph_timer)
                    out = torch_fn()
                    nbytes = (x.numel() + out.numel()) * dtype.itemsize  # read the input, write the output
                    shape = (batch, c_in, c_out, h, w, k, stride)
                    layer = f"{kind}+{activation}" + ("+transposed" if transposed else "") + ("+reflect" if reflect
                                                                                            else "")
                    rows += make_row("conv_norm", model, shape, dtype_name, "nhwc", f"{variant}:{layer}", results,
                                     nbytes, 2 * nbytes, roof)
                    progress(rows[-2:])
    return rows


def bench_unet_skips(args, device, timer, roof, fused_norm_act, graph_timer=None):
    """A U-Net level's two norms and its output relu(cat([d, up])), with the LeakyReLU the inner level applies to
    d: torch's sequence vs the fused norms writing the concatenation (both return (lrelu(d), relu of the cat))."""
    rows = []
    cases = [(2, 8, 4, 4, 0.5)] if args.smoke else [(b, *shape) for b in args.batches for shape in UNET_SKIPS]
    for batch, channels, height, width, dropout in cases:
        shape = (batch, channels, height, width)
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for layout in ("nhwc", "nchw"):
                down, up = (torch.nn.BatchNorm2d(channels).to(device).train() for _ in range(2))
                up_tail = torch.nn.Dropout(dropout) if dropout else torch.nn.Identity()
                opening = fused_norm_act.from_norm(copy.deepcopy(down), "leaky_relu")
                closing = fused_norm_act.from_norm(copy.deepcopy(up), dropout=dropout)
                opening.skip_width, closing.closes_skip = channels, True
                x, h = (torch.randn(shape, device=device, dtype=dtype) for _ in range(2))
                if layout == "nhwc":
                    x, h = (t.to(memory_format=torch.channels_last) for t in (x, h))
                x.requires_grad_(), h.requires_grad_()

                def torch_fn():
                    d = down(x)
                    return F.leaky_relu(d, 0.2), F.relu(torch.cat([d, up_tail(up(h))], 1))

                def fused_fn():
                    y, opened = opening(x)
                    return y, closing(h, skip=opened)

                params = [x, h, *down.parameters(), *up.parameters(), *opening.parameters(), *closing.parameters()]
                results = bench_pair(timer, torch_fn, fused_fn, params, graph_timer)
                nbytes = x.numel() * x.element_size()
                variant = "batch_train+leaky_relu+opens_skip, closes_skip" + (f"+dropout{dropout}" if dropout else "")
                # forward: read x and h, write lrelu(d) and the 2C-channel cat; backward: read x, h, dy and the
                # cat's gradient, write dx and dh
                rows += make_row("unet_skip", "unet_256", shape, dtype_name, layout, variant, results,
                                 5 * nbytes, 7 * nbytes, roof)
                progress(rows[-2:])
    return rows


def bench_pads(args, device, timer, roof, fused_pad_cls, graph_timer=None):
    """Reflection pad vs F.pad(mode='reflect'). In NHWC torch's CUDA pad also returns NCHW, so the next conv pays a
    layout copy that this row does not count: the end-to-end gain is larger than the speedup shown."""
    rows = []
    cases = [(2, 8, 6, 6, 3)] if args.smoke else [(b, *shape) for b in args.batches for shape in RESNET_PADS]
    for batch, channels, height, width, pad in cases:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            for layout in ("nhwc", "nchw"):
                x = torch.randn((batch, channels, height, width), device=device, dtype=dtype)
                if layout == "nhwc":
                    x = x.to(memory_format=torch.channels_last)
                x.requires_grad_()
                fused = fused_pad_cls(pad)
                results = bench_pair(timer, lambda: torch.nn.functional.pad(x, (pad,) * 4, mode="reflect"),
                                     lambda: fused(x), [x], graph_timer)
                in_bytes = x.numel() * x.element_size()
                out_bytes = in_bytes * (height + 2 * pad) * (width + 2 * pad) // (height * width)
                rows += make_row("reflection_pad", "resnet_9blocks", x.shape, dtype_name, layout, f"pad{pad}", results,
                                 in_bytes + out_bytes, in_bytes + out_bytes, roof)
                progress(rows[-2:])
    return rows


def bench_losses(args, device, timer, roof, gan_loss, l1_loss, graph_timer=None):
    rows = []
    batches = [2] if args.smoke else args.batches
    for batch in batches:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            pred = torch.randn((batch, *PATCH_SHAPE), device=device, dtype=dtype, requires_grad=True)
            nbytes = pred.numel() * pred.element_size()
            for mode, torch_loss in (("lsgan", torch.nn.functional.mse_loss),
                                     ("vanilla", torch.nn.functional.binary_cross_entropy_with_logits)):
                results = bench_pair(timer, lambda: torch_loss(pred, torch.ones_like(pred)),
                                     lambda: gan_loss(pred, True, mode), [pred], graph_timer)
                rows += make_row("gan_loss", "patchgan", pred.shape, dtype_name, "nchw", mode, results,
                                 2 * nbytes, 2 * nbytes, roof)
                progress(rows[-2:])
            image_shape = (batch, *IMAGE_SHAPE) if not args.smoke else (batch, 3, 8, 8)
            a = torch.randn(image_shape, device=device, dtype=dtype, requires_grad=True)
            b = torch.randn(image_shape, device=device, dtype=dtype)
            nbytes = a.numel() * a.element_size()
            results = bench_pair(timer, lambda: torch.nn.functional.l1_loss(a, b), lambda: l1_loss(a, b), [a],
                                 graph_timer)
            rows += make_row("l1_loss", "generator", a.shape, dtype_name, "nchw", "mean", results,
                             3 * nbytes, nbytes, roof)
            progress(rows[-2:])
    return rows


def environment(device, args):
    def git_commit():
        if os.environ.get("FASTP2P_COMMIT"):  # a copy of the tree without .git (e.g. a remote GPU machine)
            return os.environ["FASTP2P_COMMIT"]
        try:
            return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                  cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        except OSError:
            return "unknown"

    import triton

    return dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor()})",
        interpreter=os.environ.get("TRITON_INTERPRET") == "1", torch=torch.__version__, triton=triton.__version__,
        cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None,
        commit=git_commit(), command=" ".join([sys.executable, *sys.argv]), smoke=args.smoke,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        bytes_counted="ideal traffic: fwd read x + write y; bwd read x, dy + write dx; pads read x + write y "
                      "(fwd), read dy + write dx (bwd); losses read inputs + "
                      "write gradients; GB/s = bytes / median time",
    )


def markdown(meta, rows):
    lines = [f"# fastp2p kernels on {meta['device']}", "",
             f"torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}, "
             f"commit `{meta['commit'][:12]}`, {meta['date']}", "",
             f"copy bandwidth (roof): {meta['copy_gbps']:.0f} GB/s. `{meta['command']}`", "",
             "Eager columns time the Python call (host launch overhead included); graph columns replay the forward "
             "from a CUDA graph under no_grad (GPU time only). A norm's plan: programs per reduction launch, the "
             "chunks each group's rows are cut into, and the tiles its last program loads one after the other to "
             "combine them (none: one launch per pass).", "",
             "| op | model | shape | dtype | layout | variant | dir | torch ms | fused ms | speedup | fused GB/s | "
             "% of copy | graph torch ms | graph fused ms | graph speedup | graph % of copy | plan |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['op']} | {row['model']} | {'x'.join(map(str, row['shape']))} | {row['dtype']} | "
            f"{row['layout']} | {row['variant']} | {row['direction']} | {row['torch_ms']:.4f} | "
            f"{row['fused_ms']:.4f} | {row['speedup']:.2f}x | {row['fused_gbps']:.0f} | "
            f"{100 * row['fused_fraction_of_copy']:.0f}% | " + (
                f"{row['torch_graph_ms']:.4f} | {row['fused_graph_ms']:.4f} | {row['graph_speedup']:.2f}x | "
                f"{100 * row['fused_graph_fraction_of_copy']:.0f}% |" if "fused_graph_ms" in row else " |  |  |  |")
            + (f" {plan['programs']} programs, {plan['splits']} chunks, {plan['combine_loads']} combine loads |"
               if (plan := row.get("plan")) else "  |"))
    return "\n".join(lines) + "\n"


def main():
    args = parse_args()
    if not torch.cuda.is_available():
        if not args.smoke:
            sys.exit("bench_kernels.py needs a CUDA device; on a CPU only `--smoke` runs (Triton interpreter).")
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are defined
    from fastp2p.kernels import FusedNormAct, FusedReflectionPad2d, gan_loss, l1_loss

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    timer = make_timer(device)
    meta = environment(device, args)
    meta["copy_gbps"] = copy_bandwidth(device, timer, 2**20 if args.smoke else 2**30)
    graph_timer = make_graph_timer(device, args.graph)
    meta["graph"] = graph_timer is not None
    roof = meta["copy_gbps"]
    if args.conv:
        rows = bench_convs(args, device, timer, roof, graph_timer)
    else:
        groups = dict(norms=lambda: bench_norms(args, device, timer, roof, FusedNormAct, graph_timer),
                      skips=lambda: bench_unet_skips(args, device, timer, roof, FusedNormAct, graph_timer),
                      pads=lambda: bench_pads(args, device, timer, roof, FusedReflectionPad2d, graph_timer),
                      losses=lambda: bench_losses(args, device, timer, roof, gan_loss, l1_loss, graph_timer))
        rows = [row for name in ELEMENTWISE_OPS if name in args.ops for row in groups[name]()]

    os.makedirs(args.out, exist_ok=True)
    gpu = re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
    subset = "_conv" if args.conv else ("" if set(args.ops) == set(ELEMENTWISE_OPS) else "_" + "_".join(args.ops))
    stem = os.path.join(args.out, f"kernels_{gpu}_{datetime.date.today():%Y%m%d}{subset}"
                        + ("_smoke" if args.smoke else ""))
    with open(stem + ".json", "w") as f:
        json.dump(dict(meta, rows=rows), f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(meta, rows))
    print(markdown(meta, rows))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
