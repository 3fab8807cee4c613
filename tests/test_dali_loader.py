"""DALI in CPU-only mode (device_id=None), running the graph a GPU runs with decode on 'mixed'.

What is checked: the crop and flip of A and B are one draw (read back exactly from a coordinate
pattern), the files and draws are the torch path's (same paths; pixels equal up to interpolation,
measured as statistics since DALI's cubic resize is not PIL's), shapes, dtype, range, channels-last
layout, epoch length with a partial last batch, the 2-rank split, errors for bad files, 16-bit and other
kinds of file decoded to the torch path's pixels, and the kinds DALI misreads refused before training. The
torchvision-decode loader's logic runs here with a PIL decoder standing in for nvJPEG.
"""

import gc
import glob
import io
import os
import signal
import struct
import subprocess
import sys
import weakref
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from fastp2p import distributed
from fastp2p.data import create_dataset
from fastp2p.data.dali_loader import dali_available
from fastp2p.data.image_folder import to_rgb
from fastp2p.data.torchvision_decode import TorchvisionDecodeLoader, decode_on_gpu, eight_bits, torchvision_available
from fastp2p.errors import DatasetError
from tests.test_gpu_cache import make_opt, write_pairs

needs_dali = pytest.mark.skipif(not dali_available(), reason="DALI not installed (pip install nvidia-dali-cuda130)")


@pytest.fixture
def dali_loader():
    """Builds DALI CPU loaders and closes them after the test: a pipeline left to the garbage collector can be
    finalized in a forked process later in the suite and hang it (tests/loader_hazard.py)."""
    from fastp2p.data.dali_loader import DALILoader

    built = []

    def build(opt):
        built.append(DALILoader(opt, device_id=None, num_threads=1))
        return built[-1]

    yield build
    for loader in built:
        loader.close()


def pixel(value):
    return round((value.item() + 1) * 127.5)


@needs_dali
def test_shared_crop_and_flip_read_back_exactly(tmp_path, dali_loader):
    opt = make_opt(write_pairs(tmp_path, 7), preprocess="crop", crop_size=64, batch_size=3)
    loader = dali_loader(opt)
    seen = 0
    for batch in loader:
        assert batch["A"].dtype == torch.float32 and batch["A"].shape[1:] == (3, 64, 64)
        assert batch["A"].is_contiguous(memory_format=torch.channels_last)
        assert batch["A"].min() >= -1 and batch["A"].max() <= 1
        assert torch.equal(batch["A"], batch["B"])  # same crop, same flip: identical halves stay identical
        for b in range(len(batch["A"])):
            params = loader.plan.params[0][seen + b]
            x, y = params["crop_pos"]
            assert pixel(batch["A"][b, 0, 0, -1 if params["flip"] else 0]) == x
            assert pixel(batch["A"][b, 1, 0, 0]) == y
        seen += len(batch["A"])
    assert seen == len(loader) == 7  # last batch partial (7 = 3 + 3 + 1), nothing dropped


def edge_correlation(a, b):
    """Correlation of horizontal-gradient magnitudes: high when two images' edges line up."""
    ea, eb = (x.mean(1).diff(dim=-1).abs().flatten(1) for x in (a, b))
    ea, eb = ea - ea.mean(1, keepdim=True), eb - eb.mean(1, keepdim=True)
    return (ea * eb).sum(1) / (ea.norm(dim=1) * eb.norm(dim=1))


@needs_dali
def test_real_facades_match_torch_path_statistically(shared_data, dali_loader):
    opt = make_opt(f"{shared_data}/facades", max_dataset_size=16, batch_size=8)
    fast, reference = dali_loader(opt), create_dataset(opt)
    fast.set_epoch(3)
    reference.set_epoch(3)
    for got, want in zip(fast, reference, strict=True):
        assert list(got["A_paths"]) == list(want["A_paths"])
        for key in "AB":
            diff = (got[key] - want[key]).abs()
            assert diff.mean() < 0.004 and diff.max() < 0.1  # ~0.2 grey levels mean: bicubic vs PIL bicubic
        # the label map's edges line up with the photo's only when both got the same crop and flip
        matched = edge_correlation(got["A"], got["B"])
        assert (matched > edge_correlation(got["A"], got["B"].flip(-1))).all()
        assert (matched > edge_correlation(got["A"], got["B"].roll(1, 0))).all()


@needs_dali
@pytest.mark.parametrize("preprocess", ["resize_and_crop", "scale_width_and_crop", "crop"])
def test_unaligned_draws_and_modes(shared_data, preprocess, dali_loader):
    opt = make_opt(f"{shared_data}/facades_unpaired", dataset_mode="unaligned", preprocess=preprocess,
                   crop_size=200, load_size=300, output_nc=1, max_dataset_size=6, batch_size=4)
    fast, reference = dali_loader(opt), create_dataset(opt)
    for got, want in zip(fast, reference, strict=True):
        assert list(got["B_paths"]) == list(want["B_paths"])  # B drawn at random, as the torch path
        for key in "AB":
            assert got[key].shape == want[key].shape
            assert (got[key] - want[key]).abs().mean() < 0.01


@needs_dali
def test_two_ranks_cover_every_file_once(tmp_path, monkeypatch, dali_loader):
    opt = make_opt(write_pairs(tmp_path, 9), preprocess="crop", crop_size=64, batch_size=2)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    per_rank = []
    for r in range(2):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        loader = dali_loader(opt)
        loader.set_epoch(4)
        per_rank.append([p for batch in loader for p in batch["A_paths"]])
        assert loader.batches_per_epoch == 3
    assert len(per_rank[0]) == len(per_rank[1]) == 5  # 9 files padded to 10, as DistributedSampler
    assert sorted(set(per_rank[0] + per_rank[1])) == sorted(str(p) for p in (tmp_path / "train").iterdir())
    assert not set(per_rank[0]) & set(per_rank[1][:-1])  # only the padding sample repeats


@needs_dali
def test_stopping_mid_epoch_then_resuming(tmp_path, dali_loader):
    opt = make_opt(write_pairs(tmp_path, 8), preprocess="crop", crop_size=64, batch_size=2)
    loader = dali_loader(opt)
    loader.set_epoch(2)
    full = [batch["A_paths"] for batch in loader]
    next(iter(loader))  # abandoned after one batch
    loader.set_epoch(2, skip_batches=1)
    assert [batch["A_paths"] for batch in loader] == full[1:]


@needs_dali
def test_close_shuts_the_pipeline_down_at_once(tmp_path, dali_loader):
    loader = dali_loader(make_opt(write_pairs(tmp_path, 4), preprocess="crop", crop_size=64, batch_size=2))
    suspended = iter(loader)
    next(suspended)  # a pass left mid-epoch, as a stopped run leaves it
    pipeline = weakref.ref(loader.pipe)
    gc.disable()  # the pipeline must go with close(), not with a later collection
    try:
        loader.close()
        assert pipeline() is None
        suspended.close()  # the pass's cleanup finds no pipeline to drain, and says nothing
    finally:
        gc.enable()


def children(pid):
    """Child process ids of ``pid``, started from any of its threads (Linux's /proc)."""
    found = []
    for listing in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(listing) as ids:
            found += [int(child) for child in ids.read().split()]
    return found


@pytest.mark.slow
@needs_dali
def test_a_leaked_pipeline_cannot_hang_a_loader_worker(tmp_path):
    """tests/loader_hazard.py leaks a pipeline, then runs a failing worker that collects garbage: a forked worker
    hangs in the pipeline's destructor (the suite hung that way); a spawned one reports the error."""
    write_pairs(tmp_path, 2)
    script = os.path.join(os.path.dirname(__file__), "loader_hazard.py")
    process = subprocess.Popen([sys.executable, script, str(tmp_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        for pid in children(process.pid) + [process.pid]:  # a worker runs in a process group of its own
            os.kill(pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("a loader worker hung on state inherited from the process that started it")
    assert process.returncode == 0, output
    assert "DatasetError: cannot read image 0.png" in output, output


@needs_dali
def test_grayscale_and_png_files_decode_to_rgb(tmp_path, dali_loader):
    (tmp_path / "train").mkdir()
    pattern = write_pairs(tmp_path / "src", 1).joinpath("train", "0.png")
    Image.open(pattern).convert("L").save(tmp_path / "train" / "gray.jpg", quality=95)
    Image.open(pattern).save(tmp_path / "train" / "rgb.png")
    opt = make_opt(tmp_path, preprocess="crop", crop_size=64, batch_size=2, serial_batches=True)
    fast, reference = dali_loader(opt), create_dataset(opt)
    for got, want in zip(fast, reference, strict=True):
        assert got["A"].shape == want["A"].shape == (2, 3, 64, 64)
        assert (got["A"] - want["A"]).abs().max() < 0.05  # JPEG decoders round differently; PNG is exact


@needs_dali
def test_bad_files_raise_dataset_error(tmp_path, dali_loader):
    root = write_pairs(tmp_path, 2)
    (root / "train" / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match="junk.jpg"):
        dali_loader(make_opt(root, preprocess="crop", crop_size=64))
    (root / "train" / "junk.jpg").unlink()
    good = io.BytesIO()
    Image.open(root / "train" / "0.png").save(good, format="JPEG")
    (root / "train" / "cut.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])  # header intact, data cut
    loader = dali_loader(make_opt(root, preprocess="crop", crop_size=64, batch_size=3))
    with pytest.raises(DatasetError, match="cut.jpg"):
        list(loader)


@needs_dali
def test_a_batch_of_different_sizes_is_a_dataset_error(tmp_path, dali_loader):
    root = write_pairs(tmp_path, 1)
    Image.open(root / "train" / "0.png").crop((0, 0, 256, 100)).save(root / "train" / "1.png")  # another aspect
    loader = dali_loader(make_opt(root, preprocess="scale_width", load_size=64, crop_size=32, batch_size=2,
                                  serial_batches=True))
    with pytest.raises(DatasetError, match="the images of one batch have different sizes"):
        list(loader)


def pil_decode(encoded, device):
    return [torch.from_numpy(np.asarray(Image.open(io.BytesIO(e.numpy().tobytes())).convert("RGB")).copy())
            .permute(2, 0, 1).to(device) for e in encoded]


def test_torchvision_decode_logic_matches_torch_path(shared_data):
    opt = make_opt(f"{shared_data}/facades", max_dataset_size=6, batch_size=4, output_nc=1)
    fast, reference = TorchvisionDecodeLoader(opt, "cpu", decode=pil_decode), create_dataset(opt)
    for got, want in zip(fast, reference, strict=True):
        assert list(got["B_paths"]) == list(want["B_paths"])
        for key in "AB":
            assert got[key].shape == want[key].shape
            assert got[key].is_contiguous(memory_format=torch.channels_last)
            assert (got[key] - want[key]).abs().mean() < 0.004


# ---------------------------------------------------------------- 16-bit files and other kinds PIL reads


def sixteen_bit_png(path, values):
    """A 16-bit PNG of ``values``, (H, W) gray or (H, W, C) with C = 2, 3, 4, written by hand: PIL writes gray only."""
    values = np.asarray(values, dtype=">u2")
    channels = 1 if values.ndim == 2 else values.shape[2]
    rows = b"".join(b"\0" + row.tobytes() for row in values)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", values.shape[1], values.shape[0], 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


def gradient16(w, h, tag=0):
    """16-bit values across the range, nearly all above 255 (clipped to 8 bits, white)."""
    x, y = np.meshgrid(np.arange(w), np.arange(h))
    return (x * 60000 // (w - 1) + y * 40 + tag * 400).astype(np.uint16)


def assert_close_to_torch_path(fast, reference):
    for got, want in zip(fast, reference, strict=True):
        for key in "AB":
            diff = (got[key] - want[key]).abs()
            assert diff.mean() < 0.004 and diff.max() < 0.1  # the resize's interpolation, as for 8-bit files
            assert (got[key] > 0.99).float().mean() < 0.05  # clipped to 8 bits, most pixels would be white


@needs_dali
def test_16_bit_gray_pairs_decode_as_the_torch_path(tmp_path, dali_loader):
    (tmp_path / "train").mkdir()
    for i in range(3):
        a = gradient16(96, 80, i)
        sixteen_bit_png(tmp_path / "train" / f"{i}.png", np.hstack([a, 65535 - a]))
    opt = make_opt(tmp_path, load_size=72, crop_size=64, batch_size=2)
    assert_close_to_torch_path(dali_loader(opt), create_dataset(opt))


@needs_dali
def test_16_bit_gray_and_colour_unpaired_decode_as_the_torch_path(tmp_path, dali_loader):
    for side in "AB":
        (tmp_path / f"train{side}").mkdir()
    for i in range(3):
        sixteen_bit_png(tmp_path / "trainA" / f"{i}.png", gradient16(80, 96, i))
        a = gradient16(96, 80, i)
        sixteen_bit_png(tmp_path / "trainB" / f"{i}.png", np.dstack([a, a[::-1], 65535 - a]))  # opens as 8-bit RGB
    opt = make_opt(tmp_path, dataset_mode="unaligned", preprocess="scale_width_and_crop", load_size=72,
                   crop_size=64, output_nc=1, batch_size=2)
    assert_close_to_torch_path(dali_loader(opt), create_dataset(opt))


def mpo(path, image):
    image.save(path, format="MPO", save_all=True, append_images=[image.transpose(Image.Transpose.ROTATE_180)])


# name -> (write the file from a 16-bit (H, W) array, PIL mode it opens as, most grey levels DALI may differ by)
KINDS = {
    "gray16.png": (sixteen_bit_png, "I;16", 0),
    "gray16_big_endian.tif": (lambda p, v: Image.fromarray(v.astype(">u2")).save(p), "I;16B", 0),
    "gray16.ppm": (lambda p, v: p.write_bytes(b"P5 96 80 65535\n" + v.astype(">u2").tobytes()), "I", 0),
    "gray8.png": (lambda p, v: Image.fromarray((v >> 8).astype(np.uint8)).save(p), "L", 0),
    "bilevel.png": (lambda p, v: Image.fromarray(v > 30000).save(p), "1", 0),
    "rgb16.png": (lambda p, v: sixteen_bit_png(p, np.dstack([v, v[::-1], 65535 - v])), "RGB", 1),  # PIL: v >> 8
    "gray_alpha16.png": (lambda p, v: sixteen_bit_png(p, np.dstack([v, v[::-1]])), "RGBA", 1),
    "palette.tif": (lambda p, v: Image.fromarray((v >> 8).astype(np.uint8)).convert("P").save(p), "P", 1),
    "mpo.jpg": (lambda p, v: mpo(p, Image.fromarray((v >> 8).astype(np.uint8)).convert("RGB")), "RGB", 1),
}


@needs_dali
@pytest.mark.parametrize("name", KINDS)
def test_each_kind_of_file_decodes_to_the_torch_path_pixels(tmp_path, name, dali_loader):
    """No resize (--preprocess crop): the decoders' pixels themselves are compared."""
    write, mode, levels = KINDS[name]
    write(tmp_path / name, gradient16(96, 80))
    with Image.open(tmp_path / name) as image:
        assert image.mode == mode
    opt = make_opt(tmp_path, dataset_mode="single", preprocess="crop", crop_size=80, batch_size=1)
    (got,), (want,) = dali_loader(opt), create_dataset(opt)
    assert got["A"].shape == want["A"].shape == (1, 3, 80, 80)
    assert (got["A"] - want["A"]).abs().max() * 127.5 <= levels + 1e-3


SIXTEEN_BIT_PNGS = ("gray16.png", "rgb16.png", "gray_alpha16.png")


@pytest.mark.parametrize("name", SIXTEEN_BIT_PNGS)
def test_torchvision_16_bit_pngs_read_as_the_torch_path(tmp_path, name):
    """torchvision decodes a 16-bit PNG to uint16 (the values given here, as its RGB mode gives them); its loader
    reads them as the torch path does: a gray PNG scaled, colour or alpha by the high byte. Left as uint16, the
    values would be normalized far outside [-1, 1]."""
    write, _, _ = KINDS[name]
    values = gradient16(96, 80)
    write(tmp_path / name, values)
    channels = {"gray16.png": [values] * 3, "rgb16.png": [values, values[::-1], 65535 - values],
                "gray_alpha16.png": [values] * 3}[name]
    decoded = torch.from_numpy(np.stack(channels).astype(np.int32)).to(torch.uint16)
    got = eight_bits(decoded, (tmp_path / name).read_bytes())
    with Image.open(tmp_path / name) as image:
        want = torch.from_numpy(np.asarray(to_rgb(image)).copy()).permute(2, 0, 1)
    assert got.dtype == torch.uint8 and torch.equal(got, want)


@pytest.mark.parametrize("name", SIXTEEN_BIT_PNGS)
def test_torchvision_decode_of_16_bit_pngs_matches_the_torch_path(tmp_path, name):
    """The same through torchvision's own decoder, where it imports (its build must match torch's)."""
    if not torchvision_available():
        pytest.skip("torchvision is not installed, or does not import beside this torch")
    KINDS[name][0](tmp_path / name, gradient16(96, 80))
    encoded = torch.frombuffer(bytearray((tmp_path / name).read_bytes()), dtype=torch.uint8)
    (got,) = decode_on_gpu([encoded], torch.device("cpu"))
    with Image.open(tmp_path / name) as image:
        want = torch.from_numpy(np.asarray(to_rgb(image)).copy()).permute(2, 0, 1)
    assert got.dtype == torch.uint8 and (got.int() - want.int()).abs().max() <= 1


REFUSED = {
    "int32.tif": (lambda p, v: Image.fromarray(v).convert("I").save(p), r"TIFF mode I\)"),  # DALI failed
    "gray_alpha.tif": (lambda p, v: Image.fromarray((v >> 8).astype(np.uint8)).convert("LA").save(p),
                       r"TIFF mode LA\)"),  # DALI's pixels wrong, without an error
    "bilevel.tif": (lambda p, v: Image.fromarray(v > 30000).save(p), r"TIFF mode 1\)"),  # DALI failed
    "maxval1000.ppm": (lambda p, v: p.write_bytes(b"P5 96 80 1000\n" + (v % 1001).astype(">u2").tobytes()),
                       "PPM of maxval 1000"),  # PIL scales 1000 to 255, DALI does not: near black
}


@needs_dali
@pytest.mark.parametrize("name", REFUSED)
def test_files_dali_misreads_are_refused_before_the_first_batch(tmp_path, name, dali_loader):
    """One such file in trainB, which epoch 0 may not draw: still refused when the loader is built, naming it."""
    for side in "AB":
        (tmp_path / f"train{side}").mkdir()
        for i in range(3):
            sixteen_bit_png(tmp_path / f"train{side}" / f"{i}.png", gradient16(96, 80, i))
    write, problem = REFUSED[name]
    write(tmp_path / "trainB" / name, gradient16(96, 80))
    opt = make_opt(tmp_path, dataset_mode="unaligned", load_size=72, crop_size=64)
    with pytest.raises(DatasetError, match=rf"DALI cannot decode \S*{name} \({problem}.*--data_loader torch"):
        dali_loader(opt)
    opt.serial_batches = True  # B = index % 4: one epoch reads every B file
    assert str(tmp_path / "trainB" / name) in [p for batch in create_dataset(opt) for p in batch["B_paths"]]
