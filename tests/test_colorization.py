"""--model colorization and --dataset_mode colorization: the Lab conversion against scikit-image's (the reference's),
the items and result bytes the reference makes, its defaults, pix2pix's checkpoint files in both directions, and the
reference's pre-push colorization commands on real photos."""

import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastp2p import test as test_cli
from fastp2p import train as train_cli
from fastp2p.data import create_dataset
from fastp2p.data.lab import lab_to_rgb, rgb_to_lab
from fastp2p.errors import DatasetError
from fastp2p.metrics.pairs import to_uint8
from fastp2p.models import ColorizationModel, create_model
from fastp2p.models.colorization_model import lab_visual
from fastp2p.options import parse_options
from tests.reference_networks import reference_D, reference_G
from tests.test_extensions import FACADES
from tests.test_train_cli import write_images

PHOTOS = os.path.join(os.path.dirname(FACADES), "facades_unpaired", "trainA")


def skimage_color():
    return pytest.importorskip("skimage.color", reason="scikit-image (the test extra) checks the Lab conversion")


def random_lab(shape, seed):
    """Lab values over and beyond the sRGB gamut (Z < 0 among them), as a generator's ab output can be."""
    rng = np.random.RandomState(seed)
    return np.stack([rng.uniform(0, 100, shape), rng.uniform(-128, 128, shape), rng.uniform(-128, 128, shape)], -1)


def test_rgb_to_lab_is_scikit_images_to_the_bit():
    color = skimage_color()
    rng = np.random.RandomState(0)
    pixels = np.concatenate([rng.randint(0, 256, (4096, 3)), np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0],
                                                                       [10, 10, 10], [0, 255, 255]])])
    image = pixels.astype(np.uint8).reshape(-1, 1, 3)
    assert np.array_equal(rgb_to_lab(image), color.rgb2lab(image))


def test_lab_to_rgb_is_scikit_images_to_the_bit():
    color = skimage_color()
    lab = random_lab((64, 64), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-image warns of the Z < 0 values it clips
        expected = color.lab2rgb(lab)
    assert np.array_equal(lab_to_rgb(lab), expected)


def test_the_result_images_hold_the_references_bytes():
    """The reference: lab2rgb of ((L + 1) * 50, ab * 110) in float64, times 255, cast to uint8."""
    color = skimage_color()
    generator = torch.Generator().manual_seed(0)
    lightness = torch.rand(2, 1, 16, 16, generator=generator) * 2 - 1
    ab = (torch.rand(2, 2, 16, 16, generator=generator) * 2 - 1) * 1.1
    saved = to_uint8(lab_visual(lightness, ab))
    for i in range(2):
        lab = torch.cat([(lightness[i:i + 1] + 1.0) * 50.0, ab[i:i + 1] * 110.0], 1)[0].numpy().astype(np.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = (color.lab2rgb(np.transpose(lab, (1, 2, 0))) * 255).astype(np.uint8)
        assert np.array_equal(saved[i].permute(1, 2, 0).numpy(), expected)


def colorization_options(root, *flags, is_train=True):
    return parse_options(["--model", "colorization", "--dataroot", str(root), "--gpu_ids", "-1", "--num_threads",
                          "0", "--ngf", "8", "--ndf", "8", "--checkpoints_dir", str(root / "checkpoints"), *flags],
                         is_train=is_train)


def test_the_defaults_are_the_references(tmp_path):
    opt = colorization_options(tmp_path)
    assert (opt.input_nc, opt.output_nc, opt.direction, opt.dataset_mode) == (1, 2, "AtoB", "colorization")
    assert (opt.netG, opt.norm, opt.gan_mode, opt.pool_size, opt.lambda_L1) == ("unet_256", "batch", "vanilla", 0,
                                                                                100.0)
    assert colorization_options(tmp_path, is_train=False).dataset_mode == "colorization"


def test_an_item_is_the_references_lab_of_the_resized_image(tmp_path):
    color = skimage_color()
    write_images(tmp_path / "train", 2, (40, 30), seed=0)
    opt = colorization_options(tmp_path, "--load_size", "32", "--crop_size", "32", "--no_flip", "--netG",
                               "resnet_6blocks")
    item = create_dataset(opt).dataset[(0, 1)]
    image = np.array(Image.open(item["A_paths"]).convert("RGB").resize((32, 32), Image.BICUBIC))
    lab = torch.from_numpy(color.rgb2lab(image).astype(np.float32)).permute(2, 0, 1)
    assert torch.equal(item["A"], lab[[0]] / 50.0 - 1.0) and torch.equal(item["B"], lab[[1, 2]] / 110.0)


def test_other_channels_or_direction_are_one_line(tmp_path):
    write_images(tmp_path / "train", 1, (40, 30), seed=0)
    opt = colorization_options(tmp_path, "--output_nc", "3", "--load_size", "32", "--crop_size", "32", "--netG",
                               "resnet_6blocks")
    with pytest.raises(DatasetError, match="it needs --input_nc 1 --output_nc 2 --direction AtoB, got --input_nc 1 "
                                           "--output_nc 3 --direction AtoB"):
        create_dataset(opt)


def test_the_checkpoints_are_pix2pixs_and_load_both_ways(tmp_path):
    """The reference's colorization is its pix2pix with 1 -> 2 channels: its G and D state dicts load strictly into
    fastp2p's networks and fastp2p's into its."""
    model = create_model(colorization_options(tmp_path))
    assert isinstance(model, ColorizationModel)
    assert [name for name, _ in model.network_files("latest")] == ["latest_net_G.pth", "latest_net_D.pth"]
    theirs_G, theirs_D = reference_G(1, 2, 8, "unet_256", "batch", True), reference_D(3, 8, "basic", 3, "batch")
    model.netG.load_state_dict(theirs_G.state_dict())
    model.netD.load_state_dict(theirs_D.state_dict())
    theirs_G.load_state_dict(model.netG.state_dict())
    theirs_D.load_state_dict(model.netD.state_dict())
    assert model.visual_names == ["real_A", "real_B_rgb", "fake_B_rgb"]


@pytest.mark.slow
def test_the_references_pre_push_colorization_commands_run(tmp_path):
    """The reference's test_before_push.py colorization lines, with fastp2p's commands, on three real photos."""
    if not os.path.isdir(PHOTOS):
        pytest.skip("no ../shared/data/facades_unpaired here")
    for split, names in (("train", sorted(os.listdir(PHOTOS))[:3]), ("test", sorted(os.listdir(PHOTOS))[3:4])):
        os.makedirs(tmp_path / "mini_colorization" / split)
        for name in names:
            shutil.copy(os.path.join(PHOTOS, name), tmp_path / "mini_colorization" / split / name)
    common = ["--model", "colorization", "--name", "temp_color", "--dataroot", str(tmp_path / "mini_colorization"),
              "--checkpoints_dir", str(tmp_path / "checkpoints"), "--gpu_ids", "-1", "--ngf", "8", "--ndf", "8",
              "--netG", "resnet_6blocks"]
    assert train_cli.main(common + ["--n_epochs", "1", "--n_epochs_decay", "0", "--save_latest_freq", "5",
                                    "--display_id", "-1", "--num_threads", "0", "--load_size", "36",
                                    "--crop_size", "32", "--display_freq", "1", "--no_tensorboard"]) == 0
    web = os.listdir(tmp_path / "checkpoints" / "temp_color" / "web" / "images")
    assert any(name.endswith("fake_B_rgb.png") for name in web)
    assert test_cli.main(common + ["--num_test", "1", "--results_dir", str(tmp_path / "results"),
                                   "--load_size", "32", "--crop_size", "32"]) == 0
    folder = tmp_path / "results" / "temp_color" / "test_latest" / "images"
    images = sorted(os.listdir(folder))
    assert [name.split("_", 1)[1] for name in images] == ["fake_B_rgb.png", "real_A.png", "real_B_rgb.png"]
    real = np.asarray(Image.open(folder / images[2]))
    assert real.shape == (32, 32, 3) and real.std() > 0  # the photo in colour, back from Lab


def test_eval_freq_on_lab_outputs_is_one_line(tmp_path, capsys):
    write_images(tmp_path / "train", 1, (40, 30), seed=0)
    write_images(tmp_path / "val", 1, (40, 30), seed=1)
    flags = ["--model", "colorization", "--dataroot", str(tmp_path), "--gpu_ids", "-1", "--num_threads", "0",
             "--ngf", "8", "--ndf", "8", "--netG", "resnet_6blocks", "--load_size", "32", "--crop_size", "32",
             "--checkpoints_dir", str(tmp_path / "checkpoints"), "--eval_freq", "1", "--no_tensorboard"]
    assert train_cli.main(flags) == 2
    assert "--eval_freq scores RGB outputs of the image modes (aligned, unaligned, single); --dataset_mode " \
           "colorization is not one of them" in capsys.readouterr().err
