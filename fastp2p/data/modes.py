"""``--dataset_mode`` name -> dataset class: the built-ins, else a user's own (fastp2p.extensions)."""

from fastp2p.extensions import find_class

from .colorization_dataset import ColorizationDataset
from .datasets import IMAGE_MODES, BaseDataset
from .template_dataset import TemplateDataset

DATASET_MODES = {**IMAGE_MODES, TemplateDataset.mode: TemplateDataset, ColorizationDataset.mode: ColorizationDataset}
"""the built-in modes; any other --dataset_mode name is looked up as the reference looks up its own (find_dataset)"""


def find_dataset(name):
    """The dataset class ``--dataset_mode name`` means: a built-in, a user's ``NAME_dataset`` module's class, or
    ``package.module:Class`` (fastp2p.extensions); an OptionError in one line otherwise."""
    return find_class(name, "dataset", tuple(DATASET_MODES.items()), BaseDataset)
