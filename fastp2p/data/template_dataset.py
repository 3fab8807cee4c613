"""``--dataset_mode template``: the reference's template dataset, the starting point for a dataset of one's own.

The reference's is an outline that yields nothing; this one runs, in the same outline: a flag of its own
(``--new_dataset_option``, whose default it then changes to 2.0, as the reference's does) and a lower default
``--max_dataset_size`` (10), every image below ``DATAROOT/PHASE`` (else below DATAROOT), and items that give the image
as both A and B (the same crop and flip), so that ``--model template`` learns to reproduce its input. It takes
fastp2p's ``(index, rng)`` items, so its draws replay exactly on resume (docs/extending.md).
"""

from .datasets import PhaseFolderDataset
from .transforms import get_params


class TemplateDataset(PhaseFolderDataset):
    mode = "template"

    @staticmethod
    def modify_commandline_options(parser, is_train):
        parser.add_argument("--new_dataset_option", type=float, default=1.0, help="a flag of the template dataset's "
                                                                                  "own (read by nothing)")
        parser.set_defaults(max_dataset_size=10, new_dataset_option=2.0)
        return parser

    def __init__(self, opt):
        super().__init__(opt)
        self.gray_A, self.gray_B = self.grayscale_in_out()

    def get_item(self, index, rng):
        path, image = self.read(index)
        params = get_params(self.opt, image.size, rng)
        return {"A": self.transform(image, params, self.gray_A), "B": self.transform(image, params, self.gray_B),
                "A_paths": path, "B_paths": path}
