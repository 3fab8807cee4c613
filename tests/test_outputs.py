"""What a run writes for a person to look at: result PNGs with the reference's bytes, and the web/ snapshots."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastp2p.visualizer import HTMLPage, save_visuals, tensor2im

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
