"""Data path: layouts, every preprocess mode, shared/independent random draws, seeded order, bad input."""

import argparse
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastp2p.data import create_dataset, get_params, make_dataset, shard_indices
from fastp2p.data.datasets import AlignedDataset, SingleDataset, UnalignedDataset
from fastp2p.data.plan import sample_rng
from fastp2p.data.transforms import to_tensor
from fastp2p.errors import DatasetError


def make_opt(dataroot, **overrides):
    opt = dict(dataroot=str(dataroot), phase="train", dataset_mode="aligned", direction="AtoB", input_nc=3,
               output_nc=3, preprocess="crop", load_size=72, crop_size=64, no_flip=False, serial_batches=False,
               max_dataset_size=float("inf"), batch_size=2, num_threads=0, isTrain=True, seed=123,
               device=torch.device("cpu"))
    opt.update(overrides)
    return argparse.Namespace(**opt)


def coordinate_image(w, h, blue=0):
    """R = x, G = y: after a crop (no resize) the top-left pixel gives the crop offset exactly."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx, yy, np.full_like(xx, blue)], axis=-1).astype(np.uint8)


def save(array, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def aligned_root(tmp_path, count=6, half=(100, 80), phase="train"):
    for i in range(count):
        save(np.concatenate([coordinate_image(*half), coordinate_image(*half, blue=255)], axis=1),
             str(tmp_path / phase / f"{i}.png"))
    return tmp_path


def unaligned_root(tmp_path, a_count=5, b_count=3, size=(100, 80)):
    for side, count in (("A", a_count), ("B", b_count)):
        for i in range(count):
            save(coordinate_image(*size, blue=i), str(tmp_path / f"train{side}" / f"{i}.png"))
    return tmp_path


def recover_crop(tensor):
    """(x, y, flipped) of a crop of a coordinate image, from its [-1, 1] tensor."""
    pixels = ((tensor[:2] + 1) * 127.5).round().long()
    left, right = int(pixels[0, 0, 0]), int(pixels[0, 0, -1])
    flipped = left > right
    return min(left, right), int(pixels[1, 0, 0]), flipped


def batches(loader):
    return [(batch["A_paths"], batch["A"]) for batch in loader]


# ---------------------------------------------------------------- shared and independent draws


def test_aligned_pair_shares_crop_and_flip_on_real_facades(shared_data):
    """A and B of a facades pair equal a hand-made resize -> crop -> flip with the ONE recorded draw."""
    opt = make_opt(os.path.join(shared_data, "facades"), preprocess="resize_and_crop", load_size=286,
                   crop_size=256, max_dataset_size=8)
    dataset = AlignedDataset(opt)
    flips = set()
    for index in range(8):
        item = dataset[(3, index)]
        AB = Image.open(dataset.AB_paths[index]).convert("RGB")
        params = get_params(opt, (AB.width // 2, AB.height), sample_rng(opt, 3, index))
        (x, y), flip = params["crop_pos"], params["flip"]
        flips.add(flip)
        for key, box in (("A", (0, 0, 256, 256)), ("B", (256, 0, 512, 256))):
            half = np.asarray(AB.crop(box).resize((286, 286), Image.BICUBIC))[y:y + 256, x:x + 256]
            expected = half[:, ::-1] if flip else half
            expected = torch.from_numpy(expected.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
            torch.testing.assert_close(item[key], expected, atol=1e-6, rtol=0)
    assert flips == {True, False}


def test_aligned_crop_and_flip_are_shared_and_follow_get_params(tmp_path):
    opt = make_opt(aligned_root(tmp_path, count=30))
    dataset = AlignedDataset(opt)
    seen = []
    for index in range(30):
        item = dataset[(0, index)]
        crop_a, crop_b = recover_crop(item["A"]), recover_crop(item["B"])
        assert crop_a == crop_b
        params = get_params(opt, (100, 80), sample_rng(opt, 0, index))
        assert crop_a == (*params["crop_pos"], params["flip"])
        assert (item["B"][2] == 1).all() and (item["A"][2] == -1).all()  # B really is the right half
        seen.append(crop_a)
    xs, ys, flips = zip(*seen)
    assert set(flips) == {True, False} and len(set(xs)) > 10 and len(set(ys)) > 5
    assert max(xs) <= 100 - 64 and max(ys) <= 80 - 64


def test_unaligned_draws_independently_for_a_and_b(tmp_path):
    opt = make_opt(unaligned_root(tmp_path, 5, 5), dataset_mode="unaligned", serial_batches=True)
    dataset = UnalignedDataset(opt)
    differ = sum(recover_crop(dataset[(e, i)]["A"]) != recover_crop(dataset[(e, i)]["B"])
                 for e in range(4) for i in range(5))
    assert differ >= 15


def test_same_epoch_and_index_give_the_same_item_and_epochs_differ(tmp_path):
    opt = make_opt(aligned_root(tmp_path, count=4))
    dataset = AlignedDataset(opt)
    assert torch.equal(dataset[(2, 1)]["A"], dataset[(2, 1)]["A"])
    assert any(not torch.equal(dataset[(2, i)]["A"], dataset[(5, i)]["A"]) for i in range(4))


# ---------------------------------------------------------------- preprocess modes and options


@pytest.mark.parametrize("preprocess, load_size, expected_hw", [
    ("resize_and_crop", 72, (64, 64)),
    ("crop", 72, (64, 64)),
    ("scale_width", 72, (64, 72)),      # height int(72 * 217 / 301) = 51 is raised to crop_size
    ("scale_width", 150, (108, 150)),   # int(150 * 217 / 301) = 108
    ("scale_width_and_crop", 150, (64, 64)),
    ("none", 72, (216, 300)),           # 217 x 301 rounded to multiples of 4
])
def test_every_preprocess_mode_on_odd_sizes(tmp_path, preprocess, load_size, expected_hw):
    save(np.random.RandomState(0).randint(0, 256, (217, 301, 3), dtype=np.uint8), str(tmp_path / "x.png"))
    opt = make_opt(tmp_path, dataset_mode="single", preprocess=preprocess, load_size=load_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        item = SingleDataset(opt)[0]
    assert item["A"].shape == (3, *expected_hw)
    assert item["A"].dtype == torch.float32 and -1 <= item["A"].min() and item["A"].max() <= 1


def test_none_mode_warns_once_and_odd_aligned_width_splits_as_the_reference(tmp_path, monkeypatch):
    from fastp2p.data import datasets, transforms
    monkeypatch.setattr(transforms, "_warned_power_2", False)
    monkeypatch.setattr(datasets, "_warned_odd_width", False)
    for i in range(2):
        save(np.zeros((217, 603, 3), np.uint8), str(tmp_path / "train" / f"{i}.png"))
    dataset = AlignedDataset(make_opt(tmp_path, preprocess="none"))
    with pytest.warns(UserWarning) as record:
        items = [dataset[i] for i in range(2)]
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert any("0.png is 603 pixels wide" in m and "left 301" in m for m in messages)
    assert any("multiple of 4" in m for m in messages)
    assert items[0]["A"].shape == (3, 216, 300) and items[0]["B"].shape == (3, 216, 304)


def test_no_flip_never_flips(tmp_path):
    dataset = AlignedDataset(make_opt(aligned_root(tmp_path, count=12), no_flip=True))
    assert not any(recover_crop(dataset[i]["A"])[2] for i in range(12))


@pytest.mark.parametrize("direction, channels_a, channels_b", [("AtoB", 1, 3), ("BtoA", 3, 1)])
def test_grayscale_follows_nc_swapped_by_direction(tmp_path, direction, channels_a, channels_b):
    root = aligned_root(tmp_path, count=1)
    opt = make_opt(root, direction=direction, input_nc=1, output_nc=3, preprocess="none", no_flip=True)
    item = AlignedDataset(opt)[0]
    assert item["A"].shape[0] == channels_a and item["B"].shape[0] == channels_b
    gray_half = Image.open(root / "train" / "0.png").convert("RGB")
    gray_half = gray_half.crop((0, 0, 100, 80) if channels_a == 1 else (100, 0, 200, 80)).convert("L")
    gray = item["A"] if channels_a == 1 else item["B"]
    torch.testing.assert_close(gray, to_tensor(gray_half).reshape(1, 80, 100))


def test_to_tensor_is_torchvision_arithmetic():
    array = np.arange(256, dtype=np.uint8).reshape(16, 16)
    rgb = np.stack([array, array[::-1], array.T], axis=-1)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).sub(0.5).div(0.5)
    assert torch.equal(to_tensor(Image.fromarray(rgb)), expected)


def test_max_dataset_size_keeps_the_first_sorted_files(tmp_path):
    for name in ("c.png", "a.png", "sub/b.png"):
        save(coordinate_image(8, 8), str(tmp_path / name))
    (tmp_path / "notes.txt").write_text("not an image")
    assert [os.path.relpath(p, tmp_path) for p in make_dataset(str(tmp_path))] == ["a.png", "c.png", "sub/b.png"]
    loader = create_dataset(make_opt(tmp_path, dataset_mode="single", preprocess="none", max_dataset_size=2))
    assert len(loader) == 2 and len(loader.dataset) == 2


def test_serial_batches_reads_in_order_and_pairs_b_by_index(tmp_path):
    loader = create_dataset(make_opt(unaligned_root(tmp_path, 5, 3), dataset_mode="unaligned",
                                     serial_batches=True, batch_size=2))
    assert len(loader) == 5
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        a_paths = [p for batch in loader for p in batch["A_paths"]]
        b_paths = [p for batch in loader for p in batch["B_paths"]]
        assert [os.path.basename(p) for p in a_paths] == [f"{i}.png" for i in range(5)]
        assert [os.path.basename(p) for p in b_paths] == [f"{i % 3}.png" for i in range(5)]


def test_unaligned_random_b_covers_b_folder(tmp_path):
    dataset = UnalignedDataset(make_opt(unaligned_root(tmp_path, 5, 3), dataset_mode="unaligned"))
    assert len(dataset) == 5
    assert {dataset[(e, i)]["B_paths"] for e in range(4) for i in range(5)} == set(dataset.B_paths)


# ---------------------------------------------------------------- order, workers, resume, sharding


@pytest.mark.slow
def test_batches_do_not_depend_on_num_workers(tmp_path):
    root = aligned_root(tmp_path, count=7)
    runs = []
    for workers in (0, 2):
        loader = create_dataset(make_opt(root, num_threads=workers, batch_size=3))
        assert loader.dataloader.persistent_workers == (workers > 0) and not loader.dataloader.pin_memory
        loader.set_epoch(4)
        runs.append(batches(loader))
    assert [paths for paths, _ in runs[0]] == [paths for paths, _ in runs[1]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(*runs))
    assert [len(paths) for paths, _ in runs[0]] == [3, 3, 1]  # drop_last False


def test_epochs_reshuffle_and_repeat_exactly(tmp_path):
    loader = create_dataset(make_opt(aligned_root(tmp_path, count=8), batch_size=1))
    orders = {}
    for epoch in (1, 2, 1):
        loader.set_epoch(epoch)
        order = [paths[0] for paths, _ in batches(loader)]
        assert sorted(order) == sorted(loader.dataset.AB_paths)
        assert orders.setdefault(epoch, order) == order
    assert orders[1] != orders[2]


def test_skip_batches_resumes_the_rest_of_the_epoch_exactly(tmp_path):
    loader = create_dataset(make_opt(aligned_root(tmp_path, count=7), batch_size=2))
    loader.set_epoch(3)
    full = batches(loader)
    loader.set_epoch(3, skip_batches=2)
    rest = batches(loader)
    assert [p for p, _ in rest] == [p for p, _ in full[2:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, full[2:]))
    assert len(batches(loader)) == len(full)  # the skip applied to one pass only


@pytest.mark.parametrize("n, shuffle", [(10, True), (10, False), (7, True)])
def test_shards_cover_every_index_once(n, shuffle):
    shards = [shard_indices(n, epoch=2, seed=5, shuffle=shuffle, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == (n + 1) // 2
    everything = shards[0] + shards[1]
    assert set(everything) == set(range(n))
    assert len(everything) - len(set(everything)) == (n % 2)  # odd n: one index repeats, as DistributedSampler
    if not shuffle:
        assert shards[0] == list(range(0, n, 2))
    assert shard_indices(n, 2, 5, shuffle) == shard_indices(n, 2, 5, shuffle, rank=0, world_size=1)


# ---------------------------------------------------------------- bad input


def test_missing_and_empty_dataroot(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        create_dataset(make_opt(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="is empty"):
        create_dataset(make_opt(tmp_path))
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match="no images in .*train"):
        create_dataset(make_opt(tmp_path))


def test_aligned_mode_on_unaligned_layout_suggests_unaligned(tmp_path):
    with pytest.raises(DatasetError, match="--dataset_mode unaligned"):
        create_dataset(make_opt(unaligned_root(tmp_path)))


def test_unaligned_mode_on_aligned_layout_suggests_aligned(tmp_path):
    with pytest.raises(DatasetError, match="--dataset_mode aligned"):
        create_dataset(make_opt(aligned_root(tmp_path), dataset_mode="unaligned"))


def test_missing_phase_lists_what_is_there(tmp_path):
    aligned_root(tmp_path, count=1, phase="val")
    with pytest.raises(DatasetError, match=r"train does not exist; .* contains: val\. Is --phase train right"):
        create_dataset(make_opt(tmp_path))


def test_images_directly_in_dataroot_point_to_the_layouts(tmp_path):
    save(coordinate_image(8, 8), str(tmp_path / "a.png"))
    with pytest.raises(DatasetError, match="holds images directly.*--dataset_mode single"):
        create_dataset(make_opt(tmp_path))


def test_corrupt_and_truncated_files_name_the_file(tmp_path):
    aligned_root(tmp_path, count=2)
    Image.fromarray(coordinate_image(200, 80)).save(tmp_path / "train" / "2.jpg", quality=90)
    data = (tmp_path / "train" / "2.jpg").read_bytes()
    (tmp_path / "train" / "2.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "train" / "3.png").write_bytes(b"not an image at all")
    dataset = AlignedDataset(make_opt(tmp_path))
    with pytest.raises(DatasetError, match=r"cannot read image .*2\.jpg: image file is truncated") as error:
        dataset[2]
    assert isinstance(error.value.__cause__, OSError)
    with pytest.raises(DatasetError, match=r"cannot read image .*3\.png"):
        dataset[3]


@pytest.mark.slow
def test_worker_errors_keep_a_clean_message(tmp_path):
    aligned_root(tmp_path, count=1)
    (tmp_path / "train" / "9.png").write_bytes(b"garbage")
    loader = create_dataset(make_opt(tmp_path, num_threads=1, serial_batches=True, batch_size=1))
    with pytest.raises(DatasetError) as error:
        list(loader)
    assert str(error.value).startswith("cannot read image ") and "Traceback" not in str(error.value)


@pytest.mark.parametrize("workers", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_a_batch_of_different_sizes_names_its_files(tmp_path, workers):
    """--preprocess scale_width keeps each aspect ratio: a batch of two can hold two heights (the reference fails
    inside torch's collate, and in a worker with a storage error)."""
    save(coordinate_image(200, 80), str(tmp_path / "train" / "0.png"))
    save(coordinate_image(200, 100), str(tmp_path / "train" / "1.png"))
    loader = create_dataset(make_opt(tmp_path, preprocess="scale_width", load_size=64, crop_size=32,
                                     serial_batches=True, num_threads=workers))
    with pytest.raises(DatasetError, match=r"the images of one batch have different sizes \(.*0\.png: 51x64, "
                                           r".*1\.png: 64x64\).*use --batch_size 1"):
        list(loader)


def test_cmyk_rgba_palette_and_grayscale_files_load_as_rgb(tmp_path):
    rgb = Image.fromarray(coordinate_image(200, 80))
    for name, image in (("cmyk.jpg", rgb.convert("CMYK")), ("rgba.png", rgb.convert("RGBA")),
                        ("palette.png", rgb.convert("P")), ("gray.png", rgb.convert("L"))):
        image.save(tmp_path / name)
    dataset = SingleDataset(make_opt(tmp_path, dataset_mode="single", preprocess="none", no_flip=True))
    for index in range(4):
        assert dataset[index]["A"].shape == (3, 80, 200)


def test_too_small_for_crop_names_file_and_sizes(tmp_path):
    save(coordinate_image(120, 50), str(tmp_path / "train" / "0.png"))
    with pytest.raises(DatasetError, match=r"0\.png: the A half of this A\|B image is 60x50, smaller than --crop_size 64"):
        create_dataset(make_opt(tmp_path))
    save(coordinate_image(200, 80), str(tmp_path / "train" / "0.png"))
    save(coordinate_image(40, 80), str(tmp_path / "train" / "1.png"))
    dataset = create_dataset(make_opt(tmp_path)).dataset
    with pytest.raises(DatasetError, match=r"1\.png: .* 20x80, smaller than --crop_size 64"):
        dataset[1]
    with pytest.raises(DatasetError, match="--load_size 32 is smaller than --crop_size 64"):
        create_dataset(make_opt(tmp_path, preprocess="resize_and_crop", load_size=32))


# ---------------------------------------------------------------- 16-bit, too narrow and too large images


def all_16_bit_values():
    return np.arange(65536, dtype=np.uint16).reshape(256, 256)


@pytest.mark.parametrize("name, mode", [("png16.png", "I;16"), ("big_endian.tif", "I;16B"), ("int32.tif", "I")])
def test_16_bit_grayscale_is_scaled_to_8_bits_not_clipped(tmp_path, name, mode):
    values = all_16_bit_values()
    image = Image.fromarray(values.astype(">u2") if mode == "I;16B" else values)
    (image.convert("I") if mode == "I" else image).save(tmp_path / name)
    with Image.open(tmp_path / name) as saved:
        assert saved.mode == mode
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    loaded = SingleDataset(make_opt(tmp_path, dataset_mode="single", preprocess="none", no_flip=True))[0]["A"]
    pixels = ((loaded + 1) * 127.5).round().to(torch.uint8).numpy()
    for channel in pixels:
        np.testing.assert_array_equal(channel, expected)
    assert (pixels == 255).mean() < 0.01  # PIL's own convert('RGB') makes 99.6% of these pixels 255


def test_aligned_image_one_pixel_wide_is_an_error_naming_the_file(tmp_path, monkeypatch):
    from fastp2p.data import datasets
    from fastp2p.data.gpu_cache import GPUCacheLoader
    monkeypatch.setattr(datasets, "_warned_odd_width", False)
    save(coordinate_image(2, 64), str(tmp_path / "train" / "0.png"))  # two halves of one column each: fine
    save(coordinate_image(1, 64), str(tmp_path / "train" / "1.png"))
    opt = make_opt(tmp_path, preprocess="resize_and_crop", load_size=64, crop_size=64, serial_batches=True)
    dataset = AlignedDataset(opt)
    assert dataset[0]["A"].shape == (3, 64, 64)
    message = r"1\.png is 1x64 pixels, too narrow to split into an A and a B half"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no odd-width warning first: the error is the whole story
        with pytest.raises(DatasetError, match=message) as error:
            dataset[1]
    assert "\n" not in str(error.value)
    with pytest.raises(DatasetError, match=message):
        GPUCacheLoader(opt, "cpu")  # the fast loaders check every file's header before decoding
    os.remove(tmp_path / "train" / "0.png")
    with pytest.raises(DatasetError, match=message):
        AlignedDataset(opt)


def write_png_header(path, width, height):
    """A PNG of the given size with no pixel data: enough for a header read, nothing allocated."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path):
    from fastp2p.data.image_folder import image_size, load_rgb
    write_png_header(tmp_path / "huge.png", 9500, 9500)  # 90,250,000 pixels: PIL itself only warns
    message = r"huge\.png is 9500x9500 = 90,250,000 pixels, over the limit of 89,478,485 pixels per image"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for read in (image_size, load_rgb):
            with pytest.raises(DatasetError, match=message) as error:
                read(str(tmp_path / "huge.png"))
            assert "\n" not in str(error.value)
        with pytest.raises(DatasetError, match=message):
            create_dataset(make_opt(tmp_path, dataset_mode="single"))
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_pixel_limit_is_the_named_constant_checked_before_decoding(tmp_path, monkeypatch):
    from fastp2p.data import image_folder
    monkeypatch.setattr(image_folder, "MAX_IMAGE_PIXELS", 100)
    save(coordinate_image(10, 10), str(tmp_path / "at_limit.png"))
    save(coordinate_image(11, 10), str(tmp_path / "over.png"))
    assert image_folder.load_rgb(str(tmp_path / "at_limit.png")).size == (10, 10)
    with pytest.raises(DatasetError, match=r"over\.png is 11x10 = 110 pixels, over the limit of 100 pixels"):
        image_folder.load_rgb(str(tmp_path / "over.png"))
