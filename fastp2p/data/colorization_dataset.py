"""``--dataset_mode colorization``: the RGB images of a folder as Lab, for ``--model colorization``, as the reference
makes them: A is the L channel scaled to [-1, 1] (L / 50 - 1), B the a and b channels divided by 110, each image
resized, cropped and flipped before the conversion (data/lab.py, scikit-image's numbers). The folder is
``DATAROOT/PHASE`` where it exists, else DATAROOT (the reference's versions read one or the other). Its defaults are
the reference's: ``--input_nc 1 --output_nc 2 --direction AtoB``, the only values it can serve.
"""

import numpy as np
import torch

from fastp2p.errors import DatasetError

from .datasets import PhaseFolderDataset
from .lab import rgb_to_lab
from .transforms import get_params, transform_image


class ColorizationDataset(PhaseFolderDataset):
    mode = "colorization"

    @staticmethod
    def modify_commandline_options(parser, is_train):
        parser.set_defaults(input_nc=1, output_nc=2, direction="AtoB")
        return parser

    def __init__(self, opt):
        super().__init__(opt)
        given = (opt.input_nc, opt.output_nc, opt.direction)
        if given != (1, 2, "AtoB"):
            raise DatasetError(f"--dataset_mode colorization gives L (1 channel) as input and ab (2 channels) as "
                               f"output: it needs --input_nc 1 --output_nc 2 --direction AtoB, got --input_nc "
                               f"{given[0]} --output_nc {given[1]} --direction {given[2]}")

    def get_item(self, index, rng):
        path, image = self.read(index)
        rgb = transform_image(image, self.opt, get_params(self.opt, image.size, rng), convert=False)
        lab = torch.from_numpy(rgb_to_lab(np.asarray(rgb)).astype(np.float32)).permute(2, 0, 1).contiguous()
        return {"A": lab[[0]] / 50.0 - 1.0, "B": lab[[1, 2]] / 110.0, "A_paths": path, "B_paths": path}
