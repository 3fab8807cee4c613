"""Inference throughput: fastp2p.test's path against the reference's, per batch size, on the same device and images.

Each row builds the model through fastp2p.test's own code (parse_options -> build_inference) from
one checkpoint of random weights (so no training run is needed) and times what fastp2p.test does per image after
decoding: set_input (the host-to-device copy), model.test(), the visuals copied back and turned into the bytes a PNG
gets (split_samples, tensor2im). Decoding (PIL) and PNG encoding are timed apart, once per image, as the host cost
every row adds on top (``host_ms_per_image``), and are left out of the rows: they cap both paths alike.

    python benchmarks/bench_infer.py --out benchmarks/results --commit "$(git rev-parse HEAD)"   # GPU: unet_256
    python benchmarks/bench_infer.py --device cpu --small --out benchmarks/results              # CPU: unet_128@128

Rows: ``reference`` (``--reference``: fp32, eager, NCHW; at batch 1 the reference's test.py), on a GPU ``bf16``
(autocast) and ``bf16_channels_last``, and ``fastp2p`` (no switch: on a GPU bf16 autocast, channels-last and a CUDA
graph; on the CPU the reference path again), each at every --batch_sizes. ``x ref`` is images/s over the reference row at batch 1. The model is pix2pix as its test runs by
default (BatchNorm with batch statistics, dropout on; at batch > 1 BatchNorm per image, see fastp2p.inference).
Writes <out>/infer_<device>_<yyyymmdd>.json and .md.
"""

import argparse
import datetime
import io
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time

import torch
from PIL import Image

from fastp2p.data import create_dataset
from fastp2p.data.builtin import builtin_dataroot
from fastp2p.inference import build_inference
from fastp2p.networks import define_G, init_weights
from fastp2p.options import parse_options
from fastp2p.test import split_samples
from fastp2p.visualizer import tensor2im

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import git_commit  # noqa: E402

ROWS = {"reference": ["--reference"],
        "bf16": ["--amp", "bf16", "--channels_last", "off", "--cuda_graph", "off"],
        "bf16_channels_last": ["--amp", "bf16", "--channels_last", "on", "--cuda_graph", "off"],
        "fastp2p": []}
CPU_ROWS = ("reference", "fastp2p")  # bf16 rows on a CPU without bf16 instructions measure oneDNN's fallback
NETWORK_FLAGS = ["--model", "pix2pix", "--direction", "BtoA", "--netG", "unet_256", "--ngf", "64",
                 "--load_size", "256", "--crop_size", "256"]
SMALL_NETWORK_FLAGS = ["--model", "pix2pix", "--direction", "BtoA", "--netG", "unet_128", "--ngf", "16",
                       "--load_size", "128", "--crop_size", "128"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true", help="unet_128 at 128 x 128 with ngf 16: the CPU mode")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="default 1 4 16 (--small: 1 4)")
    p.add_argument("--rows", nargs="+", default=None, choices=list(ROWS),
                   help="default: all on a GPU (one technique added per row), reference and fastp2p on the CPU")
    p.add_argument("--images", type=int, default=None,
                   help="images per timed pass, rounded down to whole batches (default 64; --small: 8)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes per row; the median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes per row (the CUDA graph is captured in the "
                                                         "first)")
    p.add_argument("--dataroot", default=None, help="aligned set (default: the built-in synthetic facades)")
    p.add_argument("--commit", default=None,
                   help="the tree measured (a GPU machine's copy has no git history); default: git's HEAD")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's on a GPU, 1 on the "
                                                             "CPU, as bench_train.py)")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    if args.device.type == "cuda" and args.device.index is None:
        args.device = torch.device("cuda", 0)
    args.rows = args.rows or (list(ROWS) if args.device.type == "cuda" else list(CPU_ROWS))
    args.batch_sizes = args.batch_sizes or ([1, 4] if args.small else [1, 4, 16])
    args.images = args.images or (8 if args.small else 64)
    if min(args.batch_sizes) < 1 or args.images < max(args.batch_sizes) or args.repeats < 1:
        p.error("--batch_sizes must be positive, --images at least the largest batch, --repeats >= 1")
    return args


def write_checkpoint(folder, flags):
    """Random weights for the generator of ``flags`` as a checkpoint folder: speed does not depend on the values."""
    opt = parse_options(flags, is_train=False)
    net = define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm, not opt.no_dropout)
    init_weights(net, opt.init_type, opt.init_gain)
    os.makedirs(os.path.join(folder, opt.name), exist_ok=True)
    torch.save(net.state_dict(), os.path.join(folder, opt.name, "latest_net_G.pth"))


def decoded_batches(opt, count):
    """The first ``count`` images of the test split as the loader batches them (decoded once, on the host)."""
    dataset = create_dataset(opt)
    batches = []
    try:
        for data in dataset:
            if len(batches) * opt.batch_size + opt.batch_size > count:
                break
            batches.append(data)
    finally:
        dataset.close()
    return batches


def translate(model, batches):
    """fastp2p.test's loop after decoding and before PNG encoding."""
    for data in batches:
        model.set_input(data)
        model.test()
        for _, visuals in split_samples(model.get_current_visuals(), data["B_paths"]):
            for tensor in visuals.values():
                tensor2im(tensor)


def host_cost(opt, batches):
    """Milliseconds per image of PIL decoding (the dataset's item) and PNG encoding (the 3 visuals)."""
    dataset = create_dataset(opt).dataset
    count = sum(len(data["B_paths"]) for data in batches)
    start = time.perf_counter()
    for index in range(count):
        dataset[index]
    decode = time.perf_counter() - start
    array = tensor2im(batches[0]["A"][:1])
    start = time.perf_counter()
    for _ in range(count * 3):
        Image.fromarray(array).save(io.BytesIO(), format="png")
    return {"decode_ms": 1000 * decode / count, "png_ms": 1000 * (time.perf_counter() - start) / count}


def bench_row(args, base_flags, row, batch_size):
    opt = parse_options(base_flags + ["--batch_size", str(batch_size)] + ROWS[row], is_train=False)
    model, config = build_inference(opt, args.device)
    engine = config.describe()
    batches = decoded_batches(opt, args.images)
    images = sum(len(data["B_paths"]) for data in batches)
    start = time.perf_counter()
    for _ in range(args.warmup):
        translate(model, batches)
    warmup_s = time.perf_counter() - start
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        translate(model, batches)  # ends on a host copy of the last outputs: the device is done
        rates.append(images / (time.perf_counter() - start))
    return dict(row=row, batch_size=batch_size, engine=engine, images=images, warmup_s=round(warmup_s, 2),
                images_per_s=statistics.median(rates), images_per_s_repeats=[round(r, 2) for r in rates]), opt, batches


def environment(args):
    cuda = args.device.type == "cuda"
    name = torch.cuda.get_device_name(args.device) if cuda else f"{platform.processor() or platform.machine()} CPU"
    commit, dirty = (args.commit, None) if args.commit else git_commit()
    return dict(device=name, device_type=args.device.type, torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if cuda else None, cpu_threads=torch.get_num_threads(),
                python=platform.python_version(), commit=commit, dirty=dirty, small=args.small,
                command=" ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                images=args.images, repeats=args.repeats, warmup=args.warmup)


def markdown(meta, rows):
    host = meta.get("host_ms_per_image") or {}
    lines = [f"# fastp2p inference throughput on {meta['device']} ({meta['date'][:10]})", "",
             f"torch {meta['torch']}, CUDA {meta['cuda']}, cuDNN {meta['cudnn']}, {meta['cpu_threads']} CPU threads; "
             f"commit `{meta['commit']}`{' (with local changes)' if meta['dirty'] else ''}", "",
             f"`{meta['command']}`", "",
             f"{meta['network']}; median of {meta['repeats']} passes over {meta['images']} images after "
             f"{meta['warmup']} warm-up passes. Per image: set_input, model.test(), visuals to host bytes. Not in the "
             f"rows, the host's decode ({host.get('decode_ms', float('nan')):.1f} ms/image) and PNG encoding "
             f"({host.get('png_ms', float('nan')):.1f} ms/image, 3 visuals).", "",
             "| row | bs | engine | img/s | x ref bs1 | warm-up s |", "|---|---|---|---|---|---|"]
    for r in rows:
        rate = "" if r.get("images_per_s") is None else f"{r['images_per_s']:.1f}"
        ratio = "" if r.get("vs_reference") is None else f"{r['vs_reference']:.2f}"
        lines.append(f"| {r['row']} | {r['batch_size']} | {r.get('engine') or r.get('error', '')} | {rate} | {ratio} | "
                     f"{r.get('warmup_s', '')} |")
    return "\n".join(lines) + "\n"


def write(stem, meta, rows):
    with open(stem + ".json", "w") as f:
        json.dump({**meta, "rows": rows}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(meta, rows))


def main(argv=None):
    args = parse_args(argv)
    if args.threads or args.device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    if args.device.type == "cuda":
        torch.cuda.set_device(args.device)
    meta = environment(args)
    os.makedirs(args.out, exist_ok=True)
    tag = "cpu" if args.device.type == "cpu" else re.sub(r"[^a-z0-9]+", "-", meta["device"].lower()).strip("-")
    stem = os.path.join(args.out, f"infer_{tag}_{datetime.date.today():%Y%m%d}")
    network = SMALL_NETWORK_FLAGS if args.small else NETWORK_FLAGS
    meta["network"] = " ".join(network)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        base = [*network, "--name", "bench_infer", "--checkpoints_dir", folder, "--results_dir", folder,
                "--dataroot", args.dataroot or builtin_dataroot(), "--num_test", str(args.images),
                "--gpu_ids", str(args.device.index or 0) if args.device.type == "cuda" else "-1"]
        write_checkpoint(folder, base)
        for batch_size in args.batch_sizes:
            for row in args.rows:
                try:
                    result, opt, batches = bench_row(args, base, row, batch_size)
                    if "host_ms_per_image" not in meta:
                        meta["host_ms_per_image"] = host_cost(opt, batches)
                except Exception as e:  # noqa: BLE001 - recorded with its error, the other rows still run
                    result = dict(row=row, batch_size=batch_size, error=f"{type(e).__name__}: {str(e)[:300]}")
                rows.append(result)
                print(f"{row} bs{batch_size}: {result.get('images_per_s', result.get('error'))}", flush=True)
                if args.device.type == "cuda":
                    torch.cuda.empty_cache()
    reference = next((r.get("images_per_s") for r in rows if r["row"] == "reference" and r["batch_size"] == 1), None)
    for r in rows:
        r["vs_reference"] = r["images_per_s"] / reference if reference and r.get("images_per_s") else None
    write(stem, meta, rows)
    print(markdown(meta, rows))
    print(f"wrote {stem}.json and {stem}.md")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
