"""fastp2p.test with --batch_size N and on the engine's switches, and the Translator API, against batch-1 results."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from fastp2p import test as test_cli
from fastp2p.checkpoint import network_state_dict
from fastp2p.engine import EngineConfig
from fastp2p.errors import CheckpointError, DatasetError, OptionError
from fastp2p.inference import FastGenerator, Translator, read_train_options
from fastp2p.networks import define_G, init_weights
from fastp2p.options import parse_options, save_options
from tests.conftest import requires_cuda


def write_images(folder, count, size, seed):
    """Random colour fields with fine detail, as PNG (no JPEG loss, so every pixel reaches the network as drawn)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    for i in range(count):
        coarse = Image.fromarray(rng.randint(0, 255, (6, 6, 3)).astype(np.uint8)).resize(size, Image.BILINEAR)
        noise = rng.randint(-40, 40, (size[1], size[0], 3))
        Image.fromarray(np.clip(np.asarray(coarse) + noise, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{i}.png"))


def make_checkpoint(root, name, netG, norm, model="pix2pix", ngf=8, crop_size=32, no_dropout=True, seed=0):
    """A checkpoint folder as the trainer leaves it (latest_net_G.pth, train_opt.txt), with weights drawn large
    enough (and BatchNorm statistics far enough from 0 and 1) that every layer shows in the output's pixels."""
    argv = ["--model", model, "--name", name, "--checkpoints_dir", str(root), "--netG", netG, "--norm", norm,
            "--ngf", str(ngf), "--crop_size", str(crop_size), "--load_size", str(crop_size), "--gpu_ids", "-1"]
    opt = parse_options(argv + (["--no_dropout"] if no_dropout else []), is_train=True)
    save_options(opt)
    torch.manual_seed(seed)
    suffixes = ("_A", "_B") if model == "cycle_gan" else ("",)
    for suffix in suffixes:
        net = define_G(3, 3, ngf, netG, norm, not no_dropout)
        init_weights(net, "normal", 0.3)
        for buffer_name, buffer in net.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.uniform_(-0.2, 0.2)
            elif buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 2.0)
        torch.save(network_state_dict(net), os.path.join(root, name, f"latest_net_G{suffix}.pth"))
    return os.path.join(root, name)


def run_test(tmp_path, name, results, *flags):
    argv = ["--name", name, "--checkpoints_dir", str(tmp_path / "checkpoints"),
            "--results_dir", str(tmp_path / results), "--gpu_ids", "-1", *flags]
    assert test_cli.main(argv) == 0
    return tmp_path / results / name / "test_latest"


def pixels(path):
    return np.asarray(Image.open(path))


@pytest.mark.parametrize("case", ["pix2pix_batchnorm_train_mode", "test_model_instance_norm_eval"])
def test_batch_size_4_writes_the_images_and_page_of_batch_1(tmp_path, case):
    """6 images, --num_test 5: batches of 4 and 1 (the last cut to the 5th image). In the pix2pix case each
    BatchNorm in training mode must normalize per image, or the batch's images would mix. Bit for bit at 128 x 128;
    on much smaller images (32 x 32) oneDNN picks its convolution algorithm by batch size, and the floats of a
    batch then differ from batch 1's by up to 2e-5 (a byte may come out one lower or higher)."""
    if case.startswith("pix2pix"):
        make_checkpoint(tmp_path / "checkpoints", "net", "unet_128", "batch", crop_size=128)
        write_images(tmp_path / "data" / "test", 6, (256, 128), seed=1)
        flags = ["--model", "pix2pix", "--netG", "unet_128", "--ngf", "8", "--no_dropout", "--direction", "BtoA",
                 "--load_size", "128", "--crop_size", "128"]
    else:
        make_checkpoint(tmp_path / "checkpoints", "net", "resnet_6blocks", "instance", crop_size=128)
        write_images(tmp_path / "data" / "test", 6, (140, 130), seed=1)
        flags = ["--model", "test", "--netG", "resnet_6blocks", "--norm", "instance", "--ngf", "8", "--no_dropout",
                 "--eval", "--load_size", "128", "--crop_size", "128"]
    flags += ["--dataroot", str(tmp_path / "data"), "--num_test", "5"]
    one = run_test(tmp_path, "net", "batch1", *flags)
    four = run_test(tmp_path, "net", "batch4", *flags, "--batch_size", "4")
    files = sorted(os.listdir(one / "images"))
    visuals = 3 if case.startswith("pix2pix") else 2
    assert len(files) == 5 * visuals and sorted(os.listdir(four / "images")) == files
    for name in files:
        assert np.array_equal(pixels(four / "images" / name), pixels(one / "images" / name)), name
    assert (four / "index.html").read_text() == (one / "index.html").read_text()
    assert (one / "index.html").read_text().count("<h3>") == 5


def test_batchnorm_in_training_mode_mixes_a_batch_without_the_per_image_norm(tmp_path):
    """What the per-image norm is for: the same net on a batch of 4 gives other images than one by one."""
    net = define_G(3, 3, 8, "unet_128", "batch", False)
    init_weights(net, "normal", 0.3)
    x = torch.rand(4, 3, 128, 128) * 2 - 1
    with torch.no_grad():
        assert (net(x) - torch.cat([net(x[i:i + 1]) for i in range(4)])).abs().max() > 0.01


def test_channels_last_on_the_cpu_writes_the_reference_images_within_one_level(tmp_path):
    """The FastGenerator path on the CPU (no autocast, no graph): channels-last convolutions sum in another order,
    so a pixel may truncate to the byte next to the reference's, no further."""
    make_checkpoint(tmp_path / "checkpoints", "net", "resnet_6blocks", "instance")
    write_images(tmp_path / "data", 3, (32, 32), seed=2)
    flags = ["--model", "test", "--netG", "resnet_6blocks", "--norm", "instance", "--ngf", "8", "--no_dropout",
             "--load_size", "32", "--crop_size", "32", "--dataroot", str(tmp_path / "data")]
    reference = run_test(tmp_path, "net", "reference", *flags, "--reference")
    fast = run_test(tmp_path, "net", "fast", *flags, "--channels_last", "on", "--batch_size", "2")
    for name in os.listdir(reference / "images"):
        difference = pixels(fast / "images" / name).astype(int) - pixels(reference / "images" / name)
        assert np.abs(difference).max() <= 1, name


def test_translator_gives_the_png_of_fastp2p_test_and_reads_train_opt(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoints", "net", "resnet_6blocks", "instance")
    assert read_train_options(folder)["netG"] == "resnet_6blocks"
    write_images(tmp_path / "data", 3, (45, 37), seed=3)  # resized to 32 x 32 on the way in
    page = run_test(tmp_path, "net", "results", "--model", "test", "--netG", "resnet_6blocks", "--norm", "instance",
                    "--ngf", "8", "--no_dropout", "--load_size", "32", "--crop_size", "32",
                    "--dataroot", str(tmp_path / "data"))
    translate = Translator(folder, batch_size=2, gpu_ids="-1")  # the network flags come from train_opt.txt
    paths = [str(tmp_path / "data" / f"{i}.png") for i in range(3)]
    images = translate(paths)
    for i, image in enumerate(images):
        assert image.size == (32, 32)
        assert np.array_equal(np.asarray(image), pixels(page / "images" / f"{i}_fake.png")), i
    assert np.array_equal(np.asarray(translate(Image.open(paths[1]))), np.asarray(images[1]))
    batch = torch.stack([translate.preprocess(path) for path in paths])
    output = translate(batch)
    assert output.shape == (3, 3, 32, 32) and output.dtype == torch.float32
    # batch 3 against batch 1 at 32 x 32: oneDNN's batch-dependent algorithms (see the batch-size test)
    singles = torch.cat([translate(batch[i:i + 1]) for i in range(3)])
    assert (output - singles).abs().max() < 1e-4


def test_translator_without_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="is not a checkpoint folder"):
        Translator(tmp_path / "nowhere", gpu_ids="-1")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="checkpoint not found: .*latest_net_G.pth"):
        Translator(tmp_path / "empty", netG="resnet_6blocks", gpu_ids="-1")


@requires_cuda
def test_cuda_graph_replays_the_eager_bf16_forward():
    device = torch.device("cuda")
    net = define_G(3, 3, 16, "unet_128", "batch", False).to(device).eval()
    init_weights(net, "normal", 0.3)
    config = EngineConfig(amp=torch.bfloat16, channels_last=True, cuda_graph=True)
    graphed = FastGenerator(net, config, device)
    eager = FastGenerator(net, EngineConfig(amp=torch.bfloat16, channels_last=True), device)
    def close(a, b):  # the same kernels unless cudnn.benchmark (an earlier test sets it) chose others
        return (a.float() - b.float()).abs().max() <= 1e-2

    with torch.no_grad():
        for _ in range(3):  # capture, then replays from fresh inputs; then another shape, run eagerly
            x = torch.rand(2, 3, 128, 128, device=device) * 2 - 1
            first = graphed(x)
            assert close(first, eager(x))
            graphed(torch.rand_like(x))  # a later replay rewrites the graph's buffer, not the returned copy
            assert close(first, eager(x))
        x = torch.rand(3, 3, 128, 128, device=device) * 2 - 1
        assert close(graphed(x), eager(x))


def test_translator_of_a_cycle_gan_run_picks_g_a_or_the_generator_named(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoints", "net", "resnet_6blocks", "instance", model="cycle_gan")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    g_a = Translator(folder, gpu_ids="-1")
    assert g_a.opt.model_suffix == "_A" and g_a.opt.netG == "resnet_6blocks"
    g_b = Translator(folder, generator="G_B", gpu_ids="-1")
    assert g_b.opt.model_suffix == "_B"
    assert (g_a(x) - g_b(x)).abs().max() > 0.01
    with pytest.raises(OptionError, match="G_A or G_B"):
        Translator(folder, generator="_A", gpu_ids="-1")


@requires_cuda
def test_fastp2p_test_on_the_gpu_engine_at_batch_4_is_close_to_the_reference_path(tmp_path):
    """bf16 autocast rounds every conv's inputs to 8 bits of mantissa: close to the fp32 reference, not equal."""
    make_checkpoint(tmp_path / "checkpoints", "net", "resnet_6blocks", "instance", crop_size=64)
    write_images(tmp_path / "data", 6, (64, 64), seed=4)
    flags = ["--model", "test", "--netG", "resnet_6blocks", "--norm", "instance", "--ngf", "8", "--no_dropout",
             "--load_size", "64", "--crop_size", "64", "--dataroot", str(tmp_path / "data")]
    argv = ["--name", "net", "--checkpoints_dir", str(tmp_path / "checkpoints"), "--gpu_ids", "0", *flags]
    assert test_cli.main([*argv, "--results_dir", str(tmp_path / "reference"), "--reference"]) == 0
    assert test_cli.main([*argv, "--results_dir", str(tmp_path / "fast"), "--batch_size", "4"]) == 0
    reference, fast = (tmp_path / run / "net" / "test_latest" for run in ("reference", "fast"))
    assert (fast / "index.html").read_text() == (reference / "index.html").read_text()
    for name in os.listdir(reference / "images"):
        difference = pixels(fast / "images" / name).astype(int) - pixels(reference / "images" / name)
        assert np.abs(difference).mean() <= 4, name


def test_translator_names_the_image_whose_size_the_generator_cannot_take(tmp_path):
    folder = make_checkpoint(tmp_path / "checkpoints", "net", "unet_128", "batch", crop_size=128)
    write_images(tmp_path / "data", 1, (45, 37), seed=4)  # with --preprocess none, 36 x 44 reaches the network
    translate = Translator(folder, preprocess="none", gpu_ids="-1")
    with pytest.raises(DatasetError, match=r"0\.png: images reach the networks as 36x44"):
        translate(str(tmp_path / "data" / "0.png"))
    assert translate.model.image_paths == []  # the check is told the image's name; the model is left alone
