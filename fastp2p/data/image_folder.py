"""Finding and opening images: the reference's file list, with clear errors for bad input.

Every image is opened with ``.convert('RGB')`` as the reference does, so CMYK, RGBA, palette and
grayscale files all load (alpha is dropped, CMYK is converted by PIL); grayscale *output* is a separate
choice made by ``input_nc``/``output_nc`` in the transform. 16-bit grayscale (PNG, TIFF) is scaled to 8 bits,
where PIL's own conversion would clip every value above 255 to white. A file that PIL cannot decode (corrupt,
truncated, not an image) or that is over :data:`MAX_IMAGE_PIXELS` raises :class:`DatasetError` naming the file.
"""

import os
import stat

import numpy as np
from PIL import Image

from fastp2p.errors import DatasetError

IMG_EXTENSIONS = (
    ".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".ppm", ".PPM",
    ".bmp", ".BMP", ".tif", ".TIF", ".tiff", ".TIFF",
)


# What PIL raises for a file it cannot decode: truncated data and I/O errors are OSError, a bad
# header can be SyntaxError or ValueError.
_READ_ERRORS = (OSError, SyntaxError, ValueError)

MAX_IMAGE_PIXELS = 89_478_485
"""The most pixels (width x height) an image may have: 256 MiB decoded as RGB, PIL's own default threshold.

Larger files are refused from their header, before decoding, with an error naming the file. PIL's own
check is switched off below because it fires first, inside ``Image.open``, and only warns (without the
file's name) up to twice its limit.
"""
Image.MAX_IMAGE_PIXELS = None

# PIL modes of 16-bit grayscale: "I;16*" as decoded from PNG or TIFF, "I" as older Pillow decodes 16-bit PNG.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def mixed_sizes_error(detail):
    """The DatasetError of a batch whose images came out of preprocessing at different sizes."""
    return DatasetError(f"the images of one batch have different sizes ({detail}): --preprocess scale_width or none "
                        "keeps each image's own size; use --batch_size 1, or a --preprocess that crops")


def is_image_file(filename):
    return filename.endswith(IMG_EXTENSIONS)


def make_dataset(folder, max_dataset_size=float("inf")):
    """Sorted paths of all images below ``folder`` (recursive), cut to ``max_dataset_size``.

    The reference truncates in os.walk's per-folder file order, which depends on the filesystem;
    sorting the names first makes the kept subset the same on every machine.
    """
    paths = []
    for root, _, names in sorted(os.walk(folder)):
        paths.extend(os.path.join(root, name) for name in sorted(names) if is_image_file(name))
    paths = paths[: int(min(max_dataset_size, len(paths)))]
    for path in paths:
        check_regular_file(path)
    return paths


def check_regular_file(path):
    """Refuse an image name that is no plain file (a FIFO, whose open blocks forever, a device, a folder, a dangling
    link): no image check or decode ever opens one. A link to a plain file is an image like any other."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise DatasetError(f"cannot read image {path}: {os.strerror(error.errno) if error.errno else error}") from None
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "a device or socket"
        raise DatasetError(f"{path} is {kind}, not an image file; move it out of the dataset folder")


def check_pixel_limit(path, size):
    """Refuse an image over MAX_IMAGE_PIXELS from its header size, before its pixels take any memory."""
    w, h = size
    if w * h > MAX_IMAGE_PIXELS:
        raise DatasetError(f"{path} is {w}x{h} = {w * h:,} pixels, over the limit of {MAX_IMAGE_PIXELS:,} pixels "
                           f"per image (fastp2p.data.image_folder.MAX_IMAGE_PIXELS); shrink it first")


def read_image(path, use):
    """``use(image)`` on ``path`` opened by PIL (header read, pixels decoded only if ``use`` asks for them).

    Every open goes through here: the size limit is checked first, and PIL's errors become a DatasetError
    naming the file.
    """
    try:
        with Image.open(path) as image:
            check_pixel_limit(path, image.size)
            return use(image)
    except DatasetError:
        raise
    except _READ_ERRORS as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def to_rgb(image):
    """``image.convert('RGB')``, except that 16-bit grayscale is first scaled to 8 bits (value * 255 / 65535, rounded).

    PIL converts 16-bit values to 8 bits by clipping at 255, which turns most of such an image white.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        image = Image.fromarray(sixteen_to_eight_bits(values).astype(np.uint8))
    return image.convert("RGB")


def sixteen_to_eight_bits(values):
    """16-bit grayscale values (a wide integer numpy array or torch tensor) scaled to 0..255, rounded: how every
    loader reads a 16-bit grayscale file."""
    return (values * 255 + 65535 // 2) // 65535


def load_rgb(path):
    """Decode ``path`` fully into an RGB PIL image, or raise DatasetError naming the file."""
    return read_image(path, to_rgb)


def image_size(path):
    """(width, height) from the file header only, without decoding the pixels."""
    return read_image(path, lambda image: image.size)
