"""What a run writes for a person to look at: result PNGs with the reference's bytes, and the web/ snapshots."""

import argparse
import re

import numpy as np
import pytest
import torch
from PIL import Image

from fastp2p.visualizer import Visualizer
from fastp2p.web_page import HTMLPage, save_visuals, tensor2im

# ---------------------------------------------------------------- result bytes (fastp2p.test)


def reference_tensor2im(tensor):
    """The reference's util.tensor2im, re-written: float32 (x + 1) / 2 * 255, truncated by the uint8 cast."""
    array = tensor[0].cpu().float().numpy()
    if array.shape[0] == 1:
        array = np.tile(array, (3, 1, 1))
    return ((np.transpose(array, (1, 2, 0)) + 1) / 2.0 * 255.0).astype(np.uint8)


def reference_save_image(array, path, aspect_ratio):
    """The reference's util.save_image, re-written (its resize swaps width and height: the same on square images)."""
    image = Image.fromarray(array)
    h, w, _ = array.shape
    if aspect_ratio > 1.0:
        image = image.resize((h, int(w * aspect_ratio)), Image.BICUBIC)
    if aspect_ratio < 1.0:
        image = image.resize((int(h / aspect_ratio), w), Image.BICUBIC)
    image.save(path)


def boundary_values():
    """Inputs that land on, just below and just above every byte value k and every k + 0.5 after (x + 1) / 2 * 255:
    where truncation and rounding part, and where float error can drop a whole k to k - 1."""
    targets = np.concatenate([np.arange(256), np.arange(255) + 0.5])
    x = (targets / 255 * 2 - 1).astype(np.float32)
    near = np.concatenate([np.nextafter(x, np.float32(-2)), x, np.nextafter(x, np.float32(2))])
    return torch.from_numpy(near.clip(-1, 1))


@pytest.mark.parametrize("channels", [3, 1])
def test_tensor2im_truncates_as_the_reference_at_every_rounding_boundary(channels):
    values = boundary_values()
    width = values.numel() // channels
    tensor = values[: width * channels].reshape(1, channels, 1, width)
    assert np.array_equal(tensor2im(tensor), reference_tensor2im(tensor))
    # the inputs really sit on the boundaries: rounding instead of truncating would change many bytes
    rounded = ((tensor[0].permute(1, 2, 0).numpy() + 1) / 2.0 * 255.0).round()
    assert (rounded != reference_tensor2im(tensor)[..., :channels]).sum() > 200


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 1, 24, 24), (3, 3, 17, 40)])
def test_tensor2im_equals_the_reference_on_random_tensors(shape):
    for _ in range(5):
        tensor = torch.rand(shape) * 2 - 1  # fresh values at every run
        assert np.array_equal(tensor2im(tensor), reference_tensor2im(tensor))
        assert np.array_equal(tensor2im(tensor.half()), reference_tensor2im(tensor.half()))


def test_nan_is_black_as_the_reference_casts_it_and_out_of_range_is_clamped():
    tensor = torch.tensor([float("nan"), -1.5, float("-inf"), 1.5, float("inf"), 0.0]).reshape(1, 1, 1, 6)
    with np.errstate(invalid="ignore"):
        assert reference_tensor2im(tensor)[0, 0, 0] == 0
    assert tensor2im(tensor)[0, :, 0].tolist() == [0, 0, 0, 255, 255, 127]


@pytest.mark.parametrize("aspect_ratio", [1.0, 1.5, 0.5])
def test_result_files_have_the_reference_bytes(tmp_path, aspect_ratio):
    """What fastp2p.test writes for one sample (save_visuals) against the reference's tensor2im + save_image."""
    visuals = {"real_A": torch.rand(1, 3, 32, 32) * 2 - 1, "fake_B": torch.rand(1, 1, 32, 32) * 2 - 1}
    page = HTMLPage(str(tmp_path / "fast"), "results")
    names = save_visuals(page, visuals, "sample", aspect_ratio)
    assert names == ["sample_real_A.png", "sample_fake_B.png"]
    for name, tensor in zip(names, visuals.values()):
        reference_path = tmp_path / f"reference_{name}"
        reference_save_image(reference_tensor2im(tensor), reference_path, aspect_ratio)
        assert (tmp_path / "fast" / "images" / name).read_bytes() == reference_path.read_bytes()


# ---------------------------------------------------------------- web/ snapshots during training


def make_opt(tmp_path, **overrides):
    values = dict(checkpoints_dir=str(tmp_path), name="run", no_tensorboard=True, no_html=False, display_winsize=64,
                  use_wandb=False, batch_size=1, n_epochs=1, n_epochs_decay=0)
    values.update(overrides)
    return argparse.Namespace(**values)


LABELS = ("real_A", "fake_B", "real_B")


def visuals(value):
    """Three constant images; the byte each one is saved as tells which call wrote it."""
    return {label: torch.full((1, 3, 8, 8), value) for label in LABELS}


def saved_byte(tmp_path, name):
    return int(np.asarray(Image.open(tmp_path / "run" / "web" / "images" / name))[0, 0, 0])


def page_sections(tmp_path):
    """[(epoch, [image file names])] in the order web/index.html shows them."""
    page = (tmp_path / "run" / "web" / "index.html").read_text()
    return [(int(epoch), re.findall(r'<img src="images/([^"]+)"', body))
            for epoch, body in re.findall(r"<h3>epoch \[(\d+)\]</h3>(.*?)(?=<h3>|$)", page, re.S)]


def epoch_files(epoch):
    return [f"epoch{epoch:03d}_{label}.png" for label in LABELS]


def test_first_display_of_each_epoch_is_saved_and_the_page_lists_epochs_newest_first(tmp_path):
    visualizer = Visualizer(make_opt(tmp_path))
    visualizer.reset()
    visualizer.display_current_results(visuals(-1.0), 1, 4, save_result=False)  # first of epoch 1: saved
    assert saved_byte(tmp_path, "epoch001_real_A.png") == 0
    visualizer.display_current_results(visuals(0.0), 1, 8, save_result=False)  # neither first nor save_result
    assert saved_byte(tmp_path, "epoch001_real_A.png") == 0
    visualizer.display_current_results(visuals(1.0), 1, 12, save_result=True)  # --update_html_freq: saved over
    assert saved_byte(tmp_path, "epoch001_real_A.png") == 255
    visualizer.reset()
    visualizer.display_current_results(visuals(0.0), 2, 16, save_result=False)  # first of epoch 2
    assert saved_byte(tmp_path, "epoch002_real_A.png") == 127
    assert sorted(p.name for p in (tmp_path / "run" / "web" / "images").iterdir()) == sorted(
        epoch_files(1) + epoch_files(2))
    assert page_sections(tmp_path) == [(2, epoch_files(2)), (1, epoch_files(1))]


def test_a_resumed_run_keeps_the_earlier_epochs_on_its_page(tmp_path):
    first_run = Visualizer(make_opt(tmp_path))
    for epoch in (1, 2):
        first_run.reset()
        first_run.display_current_results(visuals(0.0), epoch, 4 * epoch, save_result=False)
    resumed = Visualizer(make_opt(tmp_path))  # --continue_train: a new process, nothing in memory
    resumed.reset()
    resumed.display_current_results(visuals(0.0), 3, 12, save_result=False)
    assert page_sections(tmp_path) == [(3, epoch_files(3)), (2, epoch_files(2)), (1, epoch_files(1))]


def test_no_html_writes_no_snapshot(tmp_path):
    visualizer = Visualizer(make_opt(tmp_path, no_html=True))
    visualizer.reset()
    visualizer.display_current_results(visuals(0.0), 1, 4, save_result=True)
    assert not (tmp_path / "run" / "web").exists()
