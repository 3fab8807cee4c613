"""SSIM tile by tile: the same values as the whole map at once, on images of several sizes and batches split into
passes, and no intermediate larger than its bound whatever the image size (measured on every op's output)."""

import numpy as np
import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from fastp2p.metrics import pairs
from tests.test_metrics import noisy_copy, random_images


class LargestTensor(TorchDispatchMode):
    """The bytes of the largest tensor any op makes while the mode is on; views (a tile of the input) are none."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for leaf in pytree.tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.bytes = max(self.bytes, leaf.numel() * leaf.element_size())
        return out


def whole_map_ssim(fake, real, monkeypatch):
    """SSIM in one tile and one pass: the map of the whole batch at once."""
    with monkeypatch.context() as patch:
        patch.setattr(pairs, "SSIM_TILE", 10 ** 9)
        patch.setattr(pairs, "SSIM_TILE_ELEMENTS", 10 ** 15)
        return pairs.ssim(fake, real)


@pytest.mark.parametrize("count, channels, size", [
    (1, 3, (11, 11)), (2, 3, (12, 30)), (3, 3, (16, 16)), (5, 3, (40, 27)), (2, 1, (57, 64)), (4, 3, (23, 100)),
])
def test_tiles_give_the_whole_maps_ssim(monkeypatch, count, channels, size):
    real = random_images(count, count=count, size=size)[:, :channels]
    fake, real = torch.from_numpy(noisy_copy(real, 7)), torch.from_numpy(real)
    expected = whole_map_ssim(fake, real, monkeypatch)
    passes = []
    whole = pairs.ssim_map
    monkeypatch.setattr(pairs, "ssim_map", lambda *args: passes.append(args[0].shape) or whole(*args))
    monkeypatch.setattr(pairs, "SSIM_TILE", 7)  # output tiles of 7x7 (and the edges' remainders)
    monkeypatch.setattr(pairs, "SSIM_TILE_ELEMENTS", 2 * channels * 17 * 17)  # two images' 17x17 tiles a pass
    largest = LargestTensor()
    with largest:
        tiled = pairs.ssim(fake, real)
    np.testing.assert_allclose(tiled.numpy(), expected.numpy(), rtol=1e-12, atol=0)
    # the passes cover each image's valid region once, each within the budget of input values
    window = pairs.SSIM_WINDOW - 1
    assert sum(n * (h - window) * (w - window) for n, _, h, w in passes) == count * (size[0] - window) * (
        size[1] - window)
    assert len(passes) >= -(-(size[0] - window) // 7) * -(-(size[1] - window) // 7)  # at least one a tile
    assert all(shape.numel() <= pairs.SSIM_TILE_ELEMENTS for shape in passes)
    assert largest.bytes <= pairs.SSIM_TILE_ELEMENTS * 8


@pytest.mark.parametrize("shape", [(1, 3, 10000, 10000), (1, 3, 11, 100000), (64, 3, 256, 256), (2, 3, 1100, 1300),
                                   (1, 1, 5000, 5000)])
def test_no_intermediate_outgrows_its_bound_whatever_the_image_size(shape):
    """On meta tensors (shapes only, nothing computed), with the default tiles: the whole map of a 10000x10000 image
    would hold 2.4 GB float64 tensors."""
    fake = torch.empty(shape, dtype=torch.uint8, device="meta")
    largest = LargestTensor()
    with largest:
        values = pairs.ssim(fake, fake)
    assert values.shape == (shape[0],)
    assert largest.bytes <= pairs.SSIM_TILE_ELEMENTS * 8, largest.bytes
