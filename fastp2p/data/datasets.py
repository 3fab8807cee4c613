"""The reference's three dataset modes: aligned (pix2pix), unaligned (CycleGAN) and single (inference).

Folder layouts, the reference's: aligned reads ``DATAROOT/PHASE/`` where each file is A|B side by side; unaligned
reads ``DATAROOT/PHASEA/`` and ``DATAROOT/PHASEB/``; single reads every image below ``DATAROOT``.
Items are the reference's dicts: ``{'A', 'B', 'A_paths', 'B_paths'}`` (single: ``{'A', 'A_paths'}``),
tensors CHW float32 in [-1, 1].

Randomness. The reference draws from the global ``random`` inside each worker, so its samples depend
on the worker count and cannot be replayed. Here an item is asked for as ``(epoch, index)`` and every
draw for it (crop, flip, the unpaired B index) comes from a ``random.Random`` seeded from
``(opt.seed, epoch, index)``: the same distributions, but the same data for any ``num_threads`` and an
exact replay when a run resumes mid-epoch. A plain integer index uses ``self.epoch`` (0 by default).
The draws and the A|B split are the epoch plan's (plan.py), which the fast loaders use too.

Aligned pairs share one crop/flip draw; unpaired A and B get independent draws, as in the reference.
A file of odd width ``w`` is split as the reference splits it: A is the left ``int(w / 2)`` columns,
B the rest (one column wider); a warning names the first such file. A file no wider than tall, most likely one
picture rather than a pair, gets a warning naming it too. A file 1 pixel wide, whose A half would be empty, is a
DatasetError.

Bad input raises :class:`DatasetError` when the dataset is built (missing or empty folders, the other
mode's layout, images too small for ``--preprocess crop``) or, for a single file that turns out
unreadable or too small, when that item is loaded.
"""

import os
import warnings

import torch.utils.data

from fastp2p.errors import DatasetError

from .image_folder import image_size, is_image_file, load_rgb, make_dataset
from .plan import ab_half, sample_draws, sample_rng
from .transforms import PREPROCESS_MODES, power_2_size, transform_image

_warned_odd_width = False
_warned_single = False


class BaseDataset(torch.utils.data.Dataset):
    """Shared option checks and the ``(epoch, index)`` item protocol."""

    def __init__(self, opt):
        if opt.preprocess not in PREPROCESS_MODES:
            raise ValueError(f"--preprocess {opt.preprocess!r} is not one of {', '.join(PREPROCESS_MODES)}")
        if opt.preprocess in ("resize_and_crop", "scale_width_and_crop") and opt.load_size < opt.crop_size:
            raise DatasetError(f"--load_size {opt.load_size} is smaller than --crop_size {opt.crop_size}: "
                               f"the crop would not fit in the resized image")
        self.opt = opt
        self.epoch = 0
        self.root = opt.dataroot
        if not self.root:
            raise DatasetError("no --dataroot given")
        if not os.path.isdir(self.root):
            raise DatasetError(f"--dataroot {self.root} does not exist or is not a folder")

    def __getitem__(self, item):
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        return self.get_item(index, sample_rng(self.opt, epoch, index))

    def get_item(self, index, rng):
        raise NotImplementedError

    def image_paths(self, folder):
        """The sorted images below ``folder``, which must exist and hold at least one."""
        if not os.path.isdir(folder):
            raise self.layout_error(folder)
        paths = make_dataset(folder, self.opt.max_dataset_size)
        if not paths:
            raise DatasetError(f"no images in {folder} (looked for files ending in .jpg .jpeg .png .ppm "
                               f".bmp .tif .tiff, in subfolders too)")
        return paths

    def layout_error(self, folder):
        """Say which folder is missing, what is there instead, and which mode that layout suits."""
        entries = sorted(os.listdir(self.root))
        if not entries:
            return DatasetError(f"--dataroot {self.root} is empty")
        phase = self.opt.phase
        shown = ", ".join(entries[:20]) + (" ..." if len(entries) > 20 else "")
        message = f"{folder} does not exist; {self.root} contains: {shown}."
        if {phase + "A", phase + "B"} <= set(entries):
            message += (f" It has {phase}A/ and {phase}B/, the unaligned (CycleGAN) layout: "
                        f"use --dataset_mode unaligned.")
        elif phase in entries:
            message += (f" It has {phase}/, the aligned (pix2pix) layout of A|B images: "
                        f"use --dataset_mode aligned.")
        elif any(map(is_image_file, entries)):
            message += (f" It holds images directly: put them in {phase}/ (aligned, A|B images) or "
                        f"{phase}A/ and {phase}B/ (unaligned), or use --dataset_mode single to translate them.")
        else:
            message += f" Is --phase {phase} right?"
        return DatasetError(message)

    def check_fits_crop(self, path, size, what="image"):
        """``--preprocess crop`` does no resize, so every image must already be at least crop_size; ``none`` rounds
        each side to a multiple of 4, which leaves nothing of a side of 1 or 2 pixels (the networks' own minimum
        sizes are checked where a batch reaches them)."""
        w, h = size
        if self.opt.preprocess == "crop" and (w < self.opt.crop_size or h < self.opt.crop_size):
            raise DatasetError(f"{path}: {what} is {w}x{h}, smaller than --crop_size {self.opt.crop_size}; "
                               f"use --preprocess resize_and_crop or a smaller --crop_size")
        if self.opt.preprocess == "none" and 0 in power_2_size(size):
            raise DatasetError(f"{path}: {what} is {w}x{h}, which --preprocess none rounds to "
                               f"{'x'.join(map(str, power_2_size(size)))} pixels (sides to multiples of 4), far "
                               f"below what the networks take; use a --preprocess that resizes, or larger images")

    def grayscale_in_out(self):
        """Whether A and B are grayscale; BtoA swaps input_nc and output_nc as the reference does."""
        input_nc, output_nc = self.opt.input_nc, self.opt.output_nc
        if self.opt.direction == "BtoA":
            input_nc, output_nc = output_nc, input_nc
        return input_nc == 1, output_nc == 1

    def transform(self, image, params, grayscale):
        return transform_image(image, self.opt, params, grayscale=grayscale)


AB_HALF = "the A half of this A|B image"


class AlignedDataset(BaseDataset):
    """Pairs stored as one A|B image; A and B get the same crop and flip."""

    mode = "aligned"

    def __init__(self, opt):
        super().__init__(opt)
        self.dir_AB = os.path.join(self.root, opt.phase)
        self.AB_paths = self.image_paths(self.dir_AB)
        first_size = image_size(self.AB_paths[0])
        self.check_fits_crop(self.AB_paths[0], ab_half(first_size, 0)[1])
        warn_if_single(self.AB_paths[0], first_size)
        self.gray_A, self.gray_B = self.grayscale_in_out()

    def __len__(self):
        return len(self.AB_paths)

    def check_fits_crop(self, path, size, what=AB_HALF):
        """Checks the A half's ``size``, also for the fast loaders; first that it is not empty.

        The A half is ``int(w / 2)`` columns wide, so it is empty exactly when the file is 1 pixel wide; an empty
        half would otherwise train as an all-black image.
        """
        half_w, h = size
        if half_w == 0:
            raise DatasetError(f"{path} is 1x{h} pixels, too narrow to split into an A and a B half: an A|B image "
                               f"must be at least 2 pixels wide")
        super().check_fits_crop(path, size, what)

    def get_item(self, index, rng):
        path = self.AB_paths[index]
        AB = load_rgb(path)
        (box_A, size_A), (box_B, size_B) = ab_half(AB.size, 0), ab_half(AB.size, 1)
        self.check_fits_crop(path, size_A)
        if AB.width % 2:
            warn_odd_width(path, size_A[0], size_B[0])
        warn_if_single(path, AB.size)
        A, B = AB.crop(box_A), AB.crop(box_B)
        (_, params), _ = sample_draws(self, index, rng, lambda _: A.size)
        return {"A": self.transform(A, params, self.gray_A), "B": self.transform(B, params, self.gray_B),
                "A_paths": path, "B_paths": path}


class UnalignedDataset(BaseDataset):
    """Two unpaired folders; B is drawn at random (or index % B_size with serial_batches)."""

    mode = "unaligned"

    def __init__(self, opt):
        super().__init__(opt)
        self.dir_A = os.path.join(self.root, opt.phase + "A")
        self.dir_B = os.path.join(self.root, opt.phase + "B")
        self.A_paths = self.image_paths(self.dir_A)
        self.B_paths = self.image_paths(self.dir_B)
        self.A_size, self.B_size = len(self.A_paths), len(self.B_paths)
        for path in (self.A_paths[0], self.B_paths[0]):
            self.check_fits_crop(path, image_size(path))
        self.gray_A, self.gray_B = self.grayscale_in_out()

    def __len__(self):
        return max(self.A_size, self.B_size)

    def get_item(self, index, rng):
        decoded = []

        def decode(path):
            image = load_rgb(path)
            self.check_fits_crop(path, image.size)
            decoded.append(image)
            return image.size

        draws = sample_draws(self, index, rng, decode)  # lazy: A is made before B is opened, as in the reference
        a, params = next(draws)
        A = self.transform(decoded[-1], params, self.gray_A)
        b, params = next(draws)
        B = self.transform(decoded[-1], params, self.gray_B)
        return {"A": A, "B": B, "A_paths": self.A_paths[a], "B_paths": self.B_paths[b]}


class SingleDataset(BaseDataset):
    """Every image below dataroot, one direction only (``--model test``)."""

    mode = "single"

    def __init__(self, opt):
        super().__init__(opt)
        self.A_paths = self.image_paths(self.root)
        self.check_fits_crop(self.A_paths[0], image_size(self.A_paths[0]))
        self.gray_A = self.grayscale_in_out()[0]

    def __len__(self):
        return len(self.A_paths)

    def get_item(self, index, rng):
        path = self.A_paths[index]
        image = load_rgb(path)
        self.check_fits_crop(path, image.size)
        ((_, params),) = sample_draws(self, index, rng, lambda _: image.size)
        return {"A": self.transform(image, params, self.gray_A), "A_paths": path}


class PhaseFolderDataset(BaseDataset):
    """The images below ``DATAROOT/PHASE`` where it exists, else below DATAROOT (the reference's one-folder modes read
    one or the other), each read whole as RGB; a subclass makes its item of ``read(index)``."""

    def __init__(self, opt):
        super().__init__(opt)
        split = os.path.join(self.root, opt.phase)
        self.paths = self.image_paths(split if os.path.isdir(split) else self.root)
        self.check_fits_crop(self.paths[0], image_size(self.paths[0]))

    def __len__(self):
        return len(self.paths)

    def read(self, index):
        """(path, PIL image) of sample ``index``, checked against the crop."""
        path = self.paths[index]
        image = load_rgb(path)
        self.check_fits_crop(path, image.size)
        return path, image


def warn_odd_width(path, width_A, width_B):
    global _warned_odd_width
    if not _warned_odd_width:
        warnings.warn(f"{path} is {width_A + width_B} pixels wide, not even: A is the left {width_A} columns and "
                      f"B the remaining {width_B}, as the reference splits it (warned once)",
                      stacklevel=2)
        _warned_odd_width = True


def warn_if_single(path, size):
    """Warn, naming the file, when an image of an aligned folder is no wider than tall: most likely one picture
    rather than an A|B pair side by side, whose left and right halves would train as input and target."""
    global _warned_single
    w, h = size
    if w <= h and not _warned_single:
        warnings.warn(f"{path} is {w}x{h}, no wider than tall: it looks like one picture, not an A|B pair side by "
                      f"side; its left and right halves train as A and B (--dataset_mode aligned; warned once)",
                      stacklevel=2)
        _warned_single = True


IMAGE_MODES = {dataset.mode: dataset for dataset in (AlignedDataset, UnalignedDataset, SingleDataset)}
"""the modes of image pairs or sets, whose files and draws the epoch plan (plan.py) knows, so the fast loaders serve
them too; every built-in mode is in modes.DATASET_MODES"""


def takes_epoch_items(dataset):
    """Whether ``dataset`` takes the ``(epoch, index)`` items of BaseDataset (its draws seeded per item), rather than
    a plain index, as a dataset written for the reference does (its own ``__getitem__(index)``)."""
    return type(dataset).__getitem__ is BaseDataset.__getitem__
