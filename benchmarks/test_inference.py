"""Inference throughput: fastp2p.test's path against the reference's, per batch size, on the same device and images.

Each row builds the model through fastp2p.test's own code (parse_options -> build_inference) from one checkpoint of
random weights (speed does not depend on the values) and times what fastp2p.test does per image after decoding:
set_input (the host-to-device copy), model.test(), the visuals copied back and turned into a PNG's bytes
(split_samples, tensor2im), which ends on a host copy. Decoding (PIL) and PNG encoding, which cap both paths alike,
are timed apart (group ``inference host``). The model is pix2pix as its test runs by default (BatchNorm with batch
statistics, dropout on; at batch > 1 BatchNorm per image, see fastp2p.inference).
"""

import io
import os

import pytest
import torch
from PIL import Image

from benchmarks import rows
from fastp2p.data import create_dataset
from fastp2p.inference import build_inference
from fastp2p.networks import define_G, init_weights
from fastp2p.options import parse_options
from fastp2p.test import split_samples
from fastp2p.visualizer import tensor2im

# one technique added per row; ``fastp2p`` is no switch (on a GPU bf16, channels-last and a CUDA graph)
ROWS = {"reference": ["--reference"],
        "bf16": ["--amp", "bf16", "--channels_last", "off", "--cuda_graph", "off"],
        "bf16_channels_last": ["--amp", "bf16", "--channels_last", "on", "--cuda_graph", "off"],
        "fastp2p": []}
GPU_ROWS = ("bf16", "bf16_channels_last")  # on a CPU without bf16 instructions they measure oneDNN's fallback
NETWORKS = {"paper": ["--netG", "unet_256", "--ngf", "64", "--load_size", "256", "--crop_size", "256"],
            "small": ["--netG", "unet_128", "--ngf", "16", "--load_size", "128", "--crop_size", "128"]}
BATCH_SIZES = {"paper": (1, 4, 16), "small": (1, 4)}
IMAGES = {"paper": 64, "small": 8}  # per timed pass, rounded down to whole batches
ROUNDS, WARMUP = 5, 2  # the CUDA graph is captured in the first warm-up pass


def generate(metafunc, size, device):
    if "batch_size" in metafunc.fixturenames:
        metafunc.parametrize("batch_size", BATCH_SIZES[size.name], ids=[f"bs{b}" for b in BATCH_SIZES[size.name]])
        metafunc.parametrize("row", list(ROWS))


@pytest.fixture(scope="module")
def base_flags(size, device, tmp_path_factory):
    """fastp2p.test's flags over a checkpoint of random generator weights."""
    folder = str(tmp_path_factory.mktemp("bench_infer"))
    flags = ["--model", "pix2pix", "--direction", "BtoA", *NETWORKS[size.name], "--name", "bench_infer",
             "--checkpoints_dir", folder, "--results_dir", folder, "--dataroot", rows.dataroot(),
             "--num_test", str(IMAGES[size.name]),
             "--gpu_ids", str(device.index or 0) if device.type == "cuda" else "-1"]
    opt = parse_options(flags, is_train=False)
    net = define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm, not opt.no_dropout)
    init_weights(net, opt.init_type, opt.init_gain)
    os.makedirs(os.path.join(folder, opt.name))
    torch.save(net.state_dict(), os.path.join(folder, opt.name, "latest_net_G.pth"))
    return flags


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


def test_inference(timed, benchmark, base_flags, batch_size, row, size, device):
    if row in GPU_ROWS and device.type != "cuda":
        pytest.skip("bf16 on a CPU measures oneDNN's fallback where the CPU lacks bf16 instructions")
    opt = parse_options(base_flags + ["--batch_size", str(batch_size)] + ROWS[row], is_train=False)
    model, config = build_inference(opt, device)
    batches = decoded_batches(opt, IMAGES[size.name])
    if not benchmark.disabled:
        for _ in range(WARMUP):
            translate(model, batches)
    timed(lambda: translate(model, batches), group=f"inference bs{batch_size}", row=row, reference=row == "reference",
          units=sum(len(data["B_paths"]) for data in batches), unit="images", rounds=ROUNDS, batch_size=batch_size,
          engine=config.describe(), flags=ROWS[row])


@pytest.mark.parametrize("stage", ["decode", "png_encode"])
def test_inference_host(timed, base_flags, stage):
    """What every row adds on the host per image: the dataset's PIL decode, or the PNG encoding of its 3 visuals."""
    opt = parse_options(base_flags + ["--batch_size", "1"], is_train=False)
    dataset = create_dataset(opt)
    try:
        count = min(len(dataset.dataset), 8)
        array = tensor2im(dataset.dataset[0]["A"][None])

        def decode():
            for index in range(count):
                dataset.dataset[index]

        def encode():
            for _ in range(count * 3):
                Image.fromarray(array).save(io.BytesIO(), format="png")

        timed(decode if stage == "decode" else encode, group="inference host", row=stage, units=count,
              unit="images", rounds=ROUNDS)
    finally:
        dataset.close()
