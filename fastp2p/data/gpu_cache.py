"""GPU-resident dataset, and the epoch plan every fast loader shares with the reference path.

Why: pix2pix at bs 16 wants thousands of images/s, beyond a CPU worker pool. A set such as facades
(400 pairs, 2 x 400 x 286 x 286 x 3 bytes = 196 MB after the resize) fits on any GPU many times over,
so it is decoded and resized once and each batch is then only a gather on the device.

Fidelity: the reference resizes with PIL bicubic before its random crop. That resize does not depend on
the draw, so it is done once, with PIL, at fill time; the per-batch crop and flip are one
advanced-indexing gather (the flip is folded into the column indices) and the [-1, 1] normalisation
uses the reference's own arithmetic ((x / 255 - 0.5) / 0.5). The draws come from the torch path's
per-sample RNG (``plan_epoch``), so a batch equals the torch path's batch bit for bit; the tests
check exactly that on CPU tensors.

Batches are NCHW tensors stored channels-last (``torch.channels_last``), on the cache's device.
"""

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from fastp2p import distributed
from fastp2p.data.datasets import DATASET_MODES, UnalignedDataset, sample_rng, seed_of
from fastp2p.data.image_folder import DatasetError, image_size, load_rgb
from fastp2p.data.loader import shard_indices
from fastp2p.data.transforms import get_params

DEFAULT_BUDGET_FRACTION = 0.25


class CacheDoesNotFit(DatasetError):
    """The decoded set is larger than the memory budget, or not of one size; the caller picks another loader."""


@dataclass
class Side:
    """A or B as the fast loaders see it: its files, which half of an A|B file (None: whole), grayscale."""

    paths: list
    half: int | None
    gray: bool


def dataset_sides(dataset):
    """The sides of a torch-path dataset (its file lists and its checks are reused, not redone)."""
    if dataset.opt.dataset_mode == "aligned":
        return [Side(dataset.AB_paths, 0, dataset.gray_A), Side(dataset.AB_paths, 1, dataset.gray_B)]
    if dataset.opt.dataset_mode == "unaligned":
        return [Side(dataset.A_paths, None, dataset.gray_A), Side(dataset.B_paths, None, dataset.gray_B)]
    return [Side(dataset.A_paths, None, dataset.gray_A)]


def build_dataset(opt):
    """The torch path's dataset object: file lists, layout checks and grayscale choice, without decoding."""
    return DATASET_MODES[opt.dataset_mode](opt)


class ImageSizes:
    """Image sizes from the file headers, read once per path, with the torch dataset's size checks."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.aligned = dataset.opt.dataset_mode == "aligned"
        self.known = {}

    def full(self, path):
        """(w, h) of the file."""
        if path not in self.known:
            self.known[path] = image_size(path)
            w, h = self.known[path]
            self.dataset.check_fits_crop(path, (int(w / 2), h) if self.aligned else (w, h))
        return self.known[path]

    def __call__(self, path):
        """(w, h) that get_params sees: the A half for an A|B file."""
        w, h = self.full(path)
        return (int(w / 2), h) if self.aligned else (w, h)


@dataclass
class EpochPlan:
    """One rank's samples for one epoch: per side the file indices and the reference's crop/flip draws.

    Aligned: both sides hold the same file indices and the very same draw dicts (one draw per pair).
    """

    order: list
    files: list = field(default_factory=lambda: [[], []])
    params: list = field(default_factory=lambda: [[], []])

    def __len__(self):
        return len(self.order)

    def batches(self, batch_size, skip_batches=0):
        """(start, stop) of each batch; the last one is partial, as the torch DataLoader's (no drop_last)."""
        for start in range(skip_batches * batch_size, len(self.order), batch_size):
            yield start, min(start + batch_size, len(self.order))


def sample_draws(dataset, epoch, index, sizes):
    """Files and get_params draws of one item, in the order the torch dataset's get_item draws them."""
    opt = dataset.opt
    rng = sample_rng(opt, epoch, index)
    if opt.dataset_mode == "aligned":
        params = get_params(opt, sizes(dataset.AB_paths[index]), rng)
        return (index, index), (params, params)
    if isinstance(dataset, UnalignedDataset):
        a = index % dataset.A_size
        b = index % dataset.B_size if opt.serial_batches else rng.randint(0, dataset.B_size - 1)
        params_a = get_params(opt, sizes(dataset.A_paths[a]), rng)
        return (a, b), (params_a, get_params(opt, sizes(dataset.B_paths[b]), rng))
    return (index,), (get_params(opt, sizes(dataset.A_paths[index]), rng),)


def plan_epoch(dataset, epoch, sizes):
    """This rank's share of an epoch, drawn exactly as the torch path draws it."""
    opt = dataset.opt
    order = shard_indices(len(dataset), epoch, seed_of(opt), not opt.serial_batches,
                          distributed.rank(), distributed.world_size())
    plan = EpochPlan(order)
    for i in order:
        files, params = sample_draws(dataset, epoch, i, sizes)
        for side, (f, p) in enumerate(zip(files, params)):
            plan.files[side].append(f)
            plan.params[side].append(p)
    return plan


def crop_flip_normalize(store, idx, x, y, flip, crop_h, crop_w):
    """Gather a batch of crops from ``store`` (N, H, W, C uint8) in one indexing op; flip rides in the indices.

    Returns (B, C, crop_h, crop_w) float in [-1, 1], channels-last in memory.
    """
    rows = y[:, None] + torch.arange(crop_h, device=store.device)
    cols = torch.arange(crop_w, device=store.device)
    cols = x[:, None] + torch.where(flip[:, None], crop_w - 1 - cols, cols)
    out = store[idx[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).float().div_(255).sub_(0.5).div_(0.5)


def resized_size(opt, w, h):
    """(w, h) an image of that size has after the reference's deterministic resize step (spec 2.3).

    Mirrors transforms.transform_image: square resize, scale_width (kept when already at width and tall
    enough), or make_power_2 for --preprocess none; 'crop' alone keeps the size.
    """
    if "resize" in opt.preprocess:
        return opt.load_size, opt.load_size
    if "scale_width" in opt.preprocess:
        if w == opt.load_size and h >= opt.crop_size:
            return w, h
        return opt.load_size, int(max(opt.load_size * h / w, opt.crop_size))
    if opt.preprocess == "none":
        return int(round(w / 4) * 4), int(round(h / 4) * 4)
    return w, h


def crop_box(opt, w, h, pos):
    """(x, y, cw, ch) the reference crops from a resized (w, h) image; the whole image when it does not crop."""
    if "crop" in opt.preprocess and (w > opt.crop_size or h > opt.crop_size):
        return pos[0], pos[1], opt.crop_size, opt.crop_size
    return 0, 0, w, h


def load_resized(opt, path, side):
    """Decode one side of one file and resize it exactly as the reference does before its random crop."""
    image = load_rgb(path)
    if side.half is not None:
        w, h = image.size
        image = image.crop((0, 0, int(w / 2), h) if side.half == 0 else (int(w / 2), 0, w, h))
    if side.gray:
        image = image.convert("L")
    size = resized_size(opt, *image.size)
    if size != image.size:
        image = image.resize(size, Image.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


class _Store:
    """One side's resized images, stacked (N, H, W, C) uint8 on the device."""

    def __init__(self, opt, side, device, pool):
        loaded = list(pool.map(lambda p: load_resized(opt, p, side), side.paths))
        shapes = sorted({a.shape for a in loaded})
        if len(shapes) != 1:
            raise CacheDoesNotFit(f"under --preprocess {opt.preprocess} the images come to {len(shapes)} different "
                                  f"sizes ({shapes[0]}, {shapes[-1]}, ...); the GPU cache needs one size")
        self.store = torch.from_numpy(np.stack(loaded)).to(device)
        self.paths = side.paths
        h, w = self.store.shape[1:3]
        _, _, self.crop_w, self.crop_h = crop_box(opt, w, h, (0, 0))
        self.crops = (self.crop_h, self.crop_w) != (h, w)

    def draws(self, files, params, no_flip):
        """One epoch's index tensors on the device: file, x, y, flip (one host-to-device copy per epoch)."""
        xy = [p["crop_pos"] if self.crops else (0, 0) for p in params]
        columns = (files, [v[0] for v in xy], [v[1] for v in xy])
        dev = self.store.device
        return (*(torch.tensor(c, dtype=torch.long).to(dev) for c in columns),
                torch.tensor([bool(p["flip"]) and not no_flip for p in params]).to(dev))

    def batch(self, draws, start, stop):
        idx, x, y, flip = (t[start:stop] for t in draws)
        return crop_flip_normalize(self.store, idx, x, y, flip, self.crop_h, self.crop_w)


def _budget_bytes(device, budget_bytes):
    if budget_bytes is not None:
        return budget_bytes
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * DEFAULT_BUDGET_FRACTION)
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * DEFAULT_BUDGET_FRACTION)


class PlannedLoader:
    """What every fast loader shares with the torch loader: the dataset, its epoch plan, len, set_epoch."""

    def __init__(self, opt):
        self.opt = opt
        self.dataset = build_dataset(opt)
        self.sides = dataset_sides(self.dataset)
        self.sizes = ImageSizes(self.dataset)
        self.skip_batches = 0
        self.plan = None

    def __len__(self):
        """Samples per epoch over all ranks, as the torch loader's len (the reference's)."""
        return len(self.dataset)

    @property
    def batches_per_epoch(self):
        """Batches this process sees in a full epoch (its shard under torch.distributed)."""
        return math.ceil(len(self.plan) / self.opt.batch_size)

    def set_epoch(self, epoch, skip_batches=0):
        """Use ``epoch``'s order and draws; the next pass starts at batch ``skip_batches``."""
        self.plan = plan_epoch(self.dataset, epoch, self.sizes)
        self.skip_batches = skip_batches

    def close(self):
        """Release what the loader holds beyond memory (worker threads or processes); none here."""


class GPUCacheLoader(PlannedLoader):
    """The torch loader's interface (len, iter, set_epoch) over a set decoded once into device memory.

    ``budget_bytes`` caps the decoded size (default: a quarter of the free device memory, or of the
    free RAM on CPU); a larger set raises CacheDoesNotFit before anything is decoded.
    """

    def __init__(self, opt, device, budget_bytes=None):
        super().__init__(opt)
        device = torch.device(device)
        need, budget = self.footprint(), _budget_bytes(device, budget_bytes)
        if need > budget:
            raise CacheDoesNotFit(f"the GPU cache needs {need / 2**20:.0f} MiB for {len(self.dataset)} samples, over "
                                  f"its budget of {budget / 2**20:.0f} MiB")
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            self.stores = [_Store(opt, side, device, pool) for side in self.sides]
        self.set_epoch(0)  # the torch loader too starts at epoch 0 until told

    def footprint(self):
        """Bytes of the decoded, resized set, from the image headers alone."""
        total = 0
        for side in self.sides:
            for path in side.paths:
                w, h = resized_size(self.opt, *self.sizes(path))
                total += w * h * (1 if side.gray else 3)
        return total

    def set_epoch(self, epoch, skip_batches=0):
        super().set_epoch(epoch, skip_batches)
        self.draws = [store.draws(files, params, self.opt.no_flip)
                      for store, files, params in zip(self.stores, self.plan.files, self.plan.params)]

    def __iter__(self):
        for start, stop in self.plan.batches(self.opt.batch_size, self.skip_batches):
            batch = {}
            for key, store, draws, files in zip("AB", self.stores, self.draws, self.plan.files):
                batch[key] = store.batch(draws, start, stop)
                batch[key + "_paths"] = [store.paths[i] for i in files[start:stop]]
            yield batch
        self.skip_batches = 0
