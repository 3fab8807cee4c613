"""The reference trainer's preprocessing (its torchvision transforms), in PIL alone so torchvision stays optional.

Each step is what the reference's torchvision pipeline does to a PIL image: ``Resize`` is PIL's
``resize`` with bicubic filtering, ``ToTensor`` is uint8 HWC -> float CHW / 255 and ``Normalize(0.5, 0.5)``
maps [0, 1] to [-1, 1], in the same float32 operations so the tensors are bitwise equal.

Randomness is not drawn here: :func:`get_params` takes a ``random.Random`` and returns the crop
position and flip, and :func:`transform_image` applies them. The reference's random crop and flip for unpaired
images (torchvision's ``RandomCrop``/``RandomHorizontalFlip``) have the same distributions as a
``get_params`` draw per image, which is what the datasets use.
"""

import dataclasses
import random
import warnings
from typing import Any

import numpy as np
import torch
from PIL import Image

PREPROCESS_MODES = ("resize_and_crop", "crop", "scale_width", "scale_width_and_crop", "none")
_warned_power_2 = False


def get_params(opt, size, rng=random):
    """One draw of crop position and flip for an image of ``size`` = (w, h), as the reference draws it.

    The crop window is drawn over the size the image will have after the resize step; x, y are
    inclusive integers, and the flip probability is 1/2. ``rng`` is a ``random.Random``; by default the global
    ``random``, as the reference's own get_params(opt, size) draws.
    """
    w, h = size
    new_w, new_h = w, h
    if opt.preprocess == "resize_and_crop":
        new_w = new_h = opt.load_size
    elif opt.preprocess == "scale_width_and_crop":
        new_w, new_h = opt.load_size, opt.load_size * h // w
    x = rng.randint(0, max(0, new_w - opt.crop_size))
    y = rng.randint(0, max(0, new_h - opt.crop_size))
    flip = rng.random() > 0.5
    return {"crop_pos": (x, y), "flip": flip}


def transform_image(image, opt, params, grayscale=False, method=Image.BICUBIC, convert=True):
    """Grayscale -> resize or scale width -> crop -> make power of 2 -> flip -> tensor, in the reference's order."""
    if grayscale:
        image = image.convert("L")
    if "resize" in opt.preprocess:
        image = image.resize((opt.load_size, opt.load_size), method)
    elif "scale_width" in opt.preprocess:
        image = scale_width(image, opt.load_size, opt.crop_size, method)
    if "crop" in opt.preprocess:
        image = crop(image, params["crop_pos"], opt.crop_size)
    if opt.preprocess == "none":
        image = make_power_2(image, base=4, method=method)
    if not opt.no_flip and params["flip"]:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
    return to_tensor(image) if convert else image


@dataclasses.dataclass(frozen=True)
class Transform:
    """What the reference's ``get_transform`` returns, for datasets written for it: ``transform(image)`` is
    transform_image with ``params``, or without them with a crop and flip drawn from the global ``random`` for each
    image (the reference's torchvision transforms draw from global generators too; a resumed run restores it). A
    class, not a closure, so that a dataset holding one pickles into spawned loader workers."""

    opt: Any
    params: dict | None = None
    grayscale: bool = False
    method: int = Image.BICUBIC
    convert: bool = True

    def __call__(self, image):
        params = self.params or get_params(self.opt, image.size)
        return transform_image(image, self.opt, params, self.grayscale, self.method, self.convert)


def get_transform(opt, params=None, grayscale=False, method=Image.BICUBIC, convert=True):
    """The reference's name and arguments (see Transform)."""
    return Transform(opt, params, grayscale, method, convert)


def scale_width(image, target_width, crop_size, method=Image.BICUBIC):
    """Width to ``target_width`` keeping the aspect ratio, but never lower than ``crop_size``."""
    w, h = image.size
    if w == target_width and h >= crop_size:
        return image
    new_h = int(max(target_width * h / w, crop_size))
    return image.resize((target_width, new_h), method)


def crop(image, pos, size):
    """The square ``size`` window at ``pos``; the reference leaves an image no larger than it as is."""
    w, h = image.size
    x, y = pos
    if w > size or h > size:
        return image.crop((x, y, x + size, y + size))
    return image


def power_2_size(size, base=4):
    """``size`` (w, h) with each side rounded to a multiple of ``base``, as --preprocess none does (0 for a side of
    at most half of ``base``)."""
    return tuple(int(round(side / base) * base) for side in size)


def make_power_2(image, base=4, method=Image.BICUBIC):
    """Round each side to a multiple of ``base`` (the networks halve the size repeatedly)."""
    global _warned_power_2
    w, h = image.size
    new_w, new_h = power_2_size(image.size, base)
    if (new_w, new_h) == (w, h):
        return image
    if not _warned_power_2:
        warnings.warn(f"--preprocess none: image size ({w}, {h}) is not a multiple of {base}; "
                      f"resizing to ({new_w}, {new_h}) (warned once)", stacklevel=2)
        _warned_power_2 = True
    return image.resize((new_w, new_h), method)


def to_tensor(image):
    """uint8 PIL image -> float32 CHW in [-1, 1], with torchvision's ToTensor+Normalize arithmetic."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    return tensor.float().div(255).sub_(0.5).div_(0.5)
