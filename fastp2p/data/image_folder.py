"""Finding and opening images: the reference's file list, with clear errors for bad input.

Every image is opened with ``.convert('RGB')`` as the reference does, so CMYK, RGBA, palette and
grayscale files all load (alpha is dropped, CMYK is converted by PIL); grayscale *output* is a separate
choice made by ``input_nc``/``output_nc`` in the transform. A file that PIL cannot decode (corrupt,
truncated, not an image) raises :class:`DatasetError` naming the file, with PIL's error attached.
"""

import os

from PIL import Image

IMG_EXTENSIONS = (
    ".jpg", ".JPG", ".jpeg", ".JPEG", ".png", ".PNG", ".ppm", ".PPM",
    ".bmp", ".BMP", ".tif", ".TIF", ".tiff", ".TIFF",
)


# What PIL raises for a file it cannot decode: truncated data and I/O errors are OSError, a bad
# header can be SyntaxError or ValueError, a gigantic image DecompressionBombError.
_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DatasetError(ValueError):
    """The dataset on disk cannot be used as asked: the message says what is wrong and where."""


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
    return paths[: int(min(max_dataset_size, len(paths)))]


def load_rgb(path):
    """Decode ``path`` fully into an RGB PIL image, or raise DatasetError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except _READ_ERRORS as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error


def image_size(path):
    """(width, height) from the file header only, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except _READ_ERRORS as error:
        raise DatasetError(f"cannot read image {path}: {error}") from error
