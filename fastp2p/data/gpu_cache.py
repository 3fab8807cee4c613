"""GPU-resident dataset: a set decoded and resized once into device memory, each batch then a gather.

Why: pix2pix at bs 16 wants thousands of images/s, beyond a CPU worker pool. A set such as facades
(400 pairs, 2 x 400 x 286 x 286 x 3 bytes = 196 MB after the resize) fits on any GPU many times over,
so it is decoded and resized once and each batch is then only a gather on the device.

Fidelity: the reference resizes with PIL bicubic before its random crop. That resize does not depend on
the draw, so it is done once, with PIL, at fill time; the per-batch crop and flip are one
advanced-indexing gather (the flip is folded into the column indices) and the [-1, 1] normalisation
uses the reference's own arithmetic ((x / 255 - 0.5) / 0.5). The draws come from the epoch plan
(``plan.plan_epoch``), the torch path's per-sample RNG, so a batch equals the torch path's batch bit for
bit; the tests check exactly that on CPU tensors.

Batches are NCHW tensors stored channels-last (``torch.channels_last``), on the cache's device.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from fastp2p.data.image_folder import load_rgb
from fastp2p.data.plan import ab_half, crop_box, crop_flip_normalize, resized_size
from fastp2p.data.planned_loader import PlannedLoader
from fastp2p.errors import DatasetError

DEFAULT_BUDGET_FRACTION = 0.25


class CacheDoesNotFit(DatasetError):
    """The decoded set is larger than the memory budget, or not of one size; the caller picks another loader."""


def load_resized(opt, path, side):
    """Decode one side of one file and resize it exactly as the reference does before its random crop."""
    image = load_rgb(path)
    if side.half is not None:
        image = image.crop(ab_half(image.size, side.half)[0])
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
