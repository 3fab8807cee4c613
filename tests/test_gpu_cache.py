"""GPU-resident dataset logic on CPU tensors: bitwise the torch path's batches, shared draws, budget fallback."""

import argparse

import numpy as np
import pytest
import torch
from PIL import Image

from fastp2p.data import create_dataset, transform_image
from fastp2p.data.gpu_cache import CacheDoesNotFit, GPUCacheLoader
from fastp2p.data.plan import crop_flip_normalize, resized_size
from fastp2p.data.select import create_fast_loader


def make_opt(dataroot, **overrides):
    values = dict(dataroot=str(dataroot), phase="train", dataset_mode="aligned", direction="AtoB", input_nc=3,
                  output_nc=3, serial_batches=False, num_threads=0, batch_size=4, load_size=286, crop_size=256,
                  max_dataset_size=10, preprocess="resize_and_crop", no_flip=False, seed=7)
    values.update(overrides)
    return argparse.Namespace(**values)


def coordinate_image(w, h, tag=0):
    """R = x, G = y (mod 256), B = tag: any crop and flip can be read back from the pixels."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return Image.fromarray(np.stack([x % 256, y % 256, np.full_like(x, tag)], -1).astype(np.uint8))


def write_pairs(root, n, w=300, h=280):
    """Aligned A|B PNGs whose halves are the same coordinate image (lossless, so crops compare exactly)."""
    (root / "train").mkdir(parents=True)
    for i in range(n):
        half = coordinate_image(w, h, tag=i)
        both = Image.new("RGB", (2 * w, h))
        both.paste(half, (0, 0))
        both.paste(half, (w, 0))
        both.save(root / "train" / f"{i}.png")
    return root


def assert_same_batches(fast, reference, epoch, skip=0):
    fast.set_epoch(epoch, skip_batches=skip)
    reference.set_epoch(epoch, skip_batches=skip)
    count = 0
    for got, want in zip(fast, reference, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            if key.endswith("_paths"):
                assert list(got[key]) == list(want[key])
            else:
                assert got[key].is_contiguous(memory_format=torch.channels_last)
                assert torch.equal(got[key], want[key]), key
        count += len(want["A"])
    return count


@pytest.mark.parametrize("mode, preprocess, extra", [
    ("aligned", "resize_and_crop", {}),
    ("aligned", "scale_width_and_crop", dict(load_size=300, output_nc=1)),
    ("unaligned", "crop", dict(crop_size=200, batch_size=3)),
    ("unaligned", "resize_and_crop", dict(serial_batches=True, direction="BtoA")),
    ("single", "none", dict(batch_size=3)),
])
def test_bitwise_equal_to_torch_path(shared_data, mode, preprocess, extra):
    root = {"aligned": "facades", "unaligned": "facades_unpaired", "single": "facades/test"}[mode]
    opt = make_opt(f"{shared_data}/{root}", dataset_mode=mode, preprocess=preprocess, **extra)
    fast, reference = GPUCacheLoader(opt, "cpu"), create_dataset(opt)
    assert len(fast) == len(reference) == 10
    assert fast.batches_per_epoch == reference.batches_per_epoch
    assert assert_same_batches(fast, reference, epoch=1) == 10  # every sample, last batch partial
    assert assert_same_batches(fast, reference, epoch=2, skip=1) == 10 - opt.batch_size


def test_crop_flip_gather_reads_back_offsets():
    store = torch.from_numpy(np.stack([np.asarray(coordinate_image(40, 30, tag=i)) for i in range(3)]))
    idx, x, y = torch.tensor([2, 0, 2]), torch.tensor([0, 5, 9]), torch.tensor([1, 0, 4])
    flip = torch.tensor([False, True, True])
    out = crop_flip_normalize(store, idx, x, y, flip, 20, 16)
    assert out.shape == (3, 3, 20, 16) and out.dtype == torch.float32
    pixels = ((out + 1) * 127.5).round().long()  # back to the uint8 values
    for b in range(3):
        cols = torch.arange(16) + x[b]
        assert torch.equal(pixels[b, 0, 0], cols.flip(0) if flip[b] else cols)
        assert torch.equal(pixels[b, 1, :, 0], torch.arange(20) + y[b])
        assert (pixels[b, 2] == idx[b]).all()


def test_aligned_halves_share_one_draw(tmp_path):
    opt = make_opt(write_pairs(tmp_path, 6), preprocess="crop", crop_size=64, batch_size=6)
    loader = GPUCacheLoader(opt, "cpu")
    batch = next(iter(loader))
    assert torch.equal(batch["A"], batch["B"])
    flips = [p["flip"] for p in loader.plan.params[0]]
    assert 0 < sum(flips) < 6  # both directions drawn (seed 7), so the equality above is a real check
    for b, params in enumerate(loader.plan.params[0]):
        x, y = params["crop_pos"]
        first = round((batch["A"][b, 0, 0, -1 if params["flip"] else 0].item() + 1) * 127.5)
        assert (first, round((batch["A"][b, 1, 0, 0].item() + 1) * 127.5)) == (x, y)


@pytest.mark.parametrize("preprocess", ["crop", "scale_width", "none"])  # the *_and_crop modes share these paths
@pytest.mark.parametrize("size", [(300, 280), (286, 200), (143, 97)])
def test_resized_size_matches_reference_transform(preprocess, size):
    opt = make_opt(".", preprocess=preprocess, crop_size=300, load_size=286)  # crop_size 300: 'crop' is a no-op
    image = transform_image(Image.new("RGB", size), opt, {"crop_pos": (0, 0), "flip": False}, convert=False)
    assert image.size == resized_size(opt, *size)


def test_budget_fallback_message(tmp_path, capsys):
    opt = make_opt(write_pairs(tmp_path, 3), preprocess="crop", crop_size=64)
    with pytest.raises(CacheDoesNotFit, match="over its budget of 0 MiB"):
        GPUCacheLoader(opt, "cpu", budget_bytes=1000)
    loader = create_fast_loader(opt, "gpu_cache", budget_bytes=1000)
    assert type(loader).__name__ == "DataLoaderWrapper"
    assert "falling back" in capsys.readouterr().out


def test_mixed_sizes_do_not_cache(tmp_path):
    root = write_pairs(tmp_path, 2)
    both = Image.new("RGB", (200, 150))
    both.save(root / "train" / "9.png")
    with pytest.raises(CacheDoesNotFit, match="different sizes"):
        GPUCacheLoader(make_opt(root, preprocess="crop", crop_size=64), "cpu")
