"""What every fast loader (gpu_cache.py, dali_loader.py, torchvision_decode.py) shares with the torch loader: the
torch path's dataset object (its file lists and checks, reused), its sides, the image sizes read from the headers,
and the epoch plan (plan.py) that gives each batch its files and geometry."""

import math
from dataclasses import dataclass

import numpy as np

from fastp2p.data.datasets import IMAGE_MODES
from fastp2p.data.image_folder import read_image
from fastp2p.data.plan import ab_half, plan_epoch, side_geometry


@dataclass
class Side:
    """A or B as the fast loaders see it: its files, which half of an A|B file (None: whole), grayscale."""

    paths: list
    half: int | None
    gray: bool


def dataset_sides(dataset):
    """The sides of a torch-path dataset (its file lists and its checks are reused, not redone)."""
    if dataset.mode == "aligned":
        return [Side(dataset.AB_paths, 0, dataset.gray_A), Side(dataset.AB_paths, 1, dataset.gray_B)]
    if dataset.mode == "unaligned":
        return [Side(dataset.A_paths, None, dataset.gray_A), Side(dataset.B_paths, None, dataset.gray_B)]
    return [Side(dataset.A_paths, None, dataset.gray_A)]


def build_dataset(opt):
    """The torch path's dataset object: file lists, layout checks and grayscale choice, without decoding."""
    return IMAGE_MODES[opt.dataset_mode](opt)


class ImageSizes:
    """Image sizes from the file headers, read once per path, with the torch dataset's size checks."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.aligned = dataset.mode == "aligned"
        self.known = {}

    def full(self, path):
        """(w, h) of the file."""
        if path not in self.known:
            self.known[path] = read_image(path, lambda image: self.header(path, image))
            self.dataset.check_fits_crop(path, self.drawn(self.known[path]))
        return self.known[path]

    def header(self, path, image):
        """(w, h) of ``image``, opened from ``path`` but not decoded: where a loader refuses files its decoder
        would read differently from PIL, before any batch."""
        return image.size

    def __call__(self, path):
        """(w, h) that get_params sees: the A half for an A|B file."""
        return self.drawn(self.full(path))

    def drawn(self, size):
        """The part of a file of ``size`` that get_params draws over: an A|B file's A half, else the whole."""
        return ab_half(size, 0)[1] if self.aligned else size


class PlannedLoader:
    """What every fast loader shares with the torch loader: the dataset, its epoch plan, len, set_epoch."""

    Sizes = ImageSizes  # the header reader: a loader whose decoder is not PIL's checks its files in a subclass

    def __init__(self, opt):
        self.opt = opt
        self.dataset = build_dataset(opt)
        self.sides = dataset_sides(self.dataset)
        self.sizes = self.Sizes(self.dataset)
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


class FedLoader(PlannedLoader):
    """A loader that decodes each batch's files itself (DALI, torchvision), fed with the plan's geometry."""

    def batch_specs(self, start, stop):
        """Per side: the paths of the batch and each sample's geometry."""
        specs = []
        for side, files, params in zip(self.sides, self.plan.files, self.plan.params):
            paths = [side.paths[i] for i in files[start:stop]]
            geometry = [side_geometry(self.opt, self.sizes.full(p), side.half, q)
                        for p, q in zip(paths, params[start:stop])]
            specs.append((paths, geometry))
        return specs

    @staticmethod
    def encoded(path):
        """The file's bytes, still encoded, as the decoders take them."""
        return np.fromfile(path, dtype=np.uint8)
