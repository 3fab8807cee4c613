"""The reference's own pre-push check (its test_before_push.py) for pix2pix and CycleGAN, with ``python train.py``
and ``python test.py`` replaced by fastp2p's commands, on a few real facades images (template and colorization have
theirs in test_template.py and test_colorization.py). The reference's flags are kept as it types them; only sizes
and widths are added, so that the CPU runs them in seconds."""

import os
import shutil

import pytest

from fastp2p import test as test_cli
from fastp2p import train as train_cli
from tests.conftest import SHARED_DATA

SMALL = ["--gpu_ids", "-1", "--ngf", "8", "--ndf", "8", "--num_threads", "0"]


def mini_set(source, target, folders, count=2):
    """The first ``count`` images of each of ``folders`` of ``source``, as the reference's mini sets hold."""
    if not os.path.isdir(source):
        pytest.skip(f"no real dataset at {source}")
    for folder in folders:
        os.makedirs(target / folder)
        for name in sorted(os.listdir(os.path.join(source, folder)))[:count]:
            shutil.copy(os.path.join(source, folder, name), target / folder / name)
    return str(target)


def results_of(tmp_path, name, phase="test_latest"):
    return sorted(os.listdir(tmp_path / "results" / name / phase / "images"))


def test_the_references_pre_push_cycle_gan_commands_run(tmp_path):
    mini = mini_set(os.path.join(SHARED_DATA, "facades_unpaired"), tmp_path / "mini",
                    ("trainA", "trainB", "testA", "testB"))
    where = ["--checkpoints_dir", str(tmp_path / "checkpoints")]
    size = ["--netG", "resnet_6blocks", "--load_size", "36", "--crop_size", "32"]
    assert train_cli.main(["--model", "cycle_gan", "--name", "temp_cyclegan", "--dataroot", mini, "--n_epochs", "1",
                           "--n_epochs_decay", "0", "--save_latest_freq", "10", "--print_freq", "1",
                           "--display_id", "-1", "--no_tensorboard", *where, *SMALL, *size]) == 0
    assert test_cli.main(["--model", "test", "--name", "temp_cyclegan", "--dataroot", mini, "--num_test", "1",
                          "--results_dir", str(tmp_path / "results"), "--model_suffix", "_A", "--no_dropout", *where, *SMALL, "--netG", "resnet_6blocks",
                          "--load_size", "32", "--crop_size", "32"]) == 0
    assert [name.split("_", 1)[1] for name in results_of(tmp_path, "temp_cyclegan")] == ["fake.png", "real.png"]


def test_the_references_pre_push_pix2pix_commands_run(tmp_path):
    mini = mini_set(os.path.join(SHARED_DATA, "facades"), tmp_path / "mini_pix2pix", ("train", "test"))
    where = ["--checkpoints_dir", str(tmp_path / "checkpoints")]
    size = ["--netG", "unet_128", "--load_size", "128", "--crop_size", "128"]
    assert train_cli.main(["--model", "pix2pix", "--name", "temp_pix2pix", "--dataroot", mini, "--n_epochs", "1",
                           "--n_epochs_decay", "5", "--save_latest_freq", "10", "--display_id", "-1",
                           "--no_tensorboard", *where, *SMALL, *size]) == 0
    # the reference's test line types no network flags: they come from the run's train_opt.txt
    assert test_cli.main(["--model", "pix2pix", "--name", "temp_pix2pix", "--dataroot", mini, "--num_test", "1",
                          "--results_dir", str(tmp_path / "results"), *where, "--gpu_ids", "-1", "--num_threads", "0"]) == 0
    assert [name.split("_", 1)[1] for name in results_of(tmp_path, "temp_pix2pix")] == [
        "fake_B.png", "real_A.png", "real_B.png"]
