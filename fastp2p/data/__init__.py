"""Data for the reference path: PIL decoding, the reference's transforms, a torch DataLoader.

``create_dataset(opt)`` is the entry point; ``builtin_dataroot()`` makes the synthetic default dataset. The GPU
loaders live in their own modules, which ``select.create_fast_loader`` imports when a run asks for one.
"""

from fastp2p.errors import DatasetError

from .builtin import builtin_dataroot
from .datasets import AlignedDataset, BaseDataset, SingleDataset, UnalignedDataset
from .image_folder import IMG_EXTENSIONS, load_rgb, make_dataset
from .loader import DataLoaderWrapper, create_dataset
from .modes import find_dataset
from .plan import shard_indices
from .transforms import get_params, get_transform, transform_image

__all__ = [
    "AlignedDataset", "BaseDataset", "DataLoaderWrapper", "DatasetError", "IMG_EXTENSIONS", "SingleDataset",
    "UnalignedDataset", "builtin_dataroot", "create_dataset", "find_dataset", "get_params", "get_transform",
    "load_rgb", "make_dataset", "shard_indices", "transform_image",
]
