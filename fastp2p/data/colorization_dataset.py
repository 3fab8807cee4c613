"""``--dataset_mode colorization``: the RGB images of a folder as Lab, for ``--model colorization``, as the reference
makes them: A is the L channel scaled to [-1, 1] (L / 50 - 1), B the a and b channels divided by 110, each image
resized, cropped and flipped before the conversion (data/lab.py, scikit-image's numbers). The folder is
``DATAROOT/PHASE`` where it exists, else DATAROOT (the reference's versions read one or the other). Its defaults are
the reference's: ``--input_nc 1 --output_nc 2 --direction AtoB``, the only values it can serve.
"""

import os

import numpy as np
import torch

from fastp2p.errors import DatasetError

from .datasets import BaseDataset
from .image_folder import image_size, load_rgb
from .lab import rgb_to_lab
from .transforms import get_params, transform_image


class ColorizationDataset(BaseDataset):
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
        split = os.path.join(self.root, opt.phase)
        self.paths = self.image_paths(split if os.path.isdir(split) else self.root)
        self.check_fits_crop(self.paths[0], image_size(self.paths[0]))

    def __len__(self):
        return len(self.paths)

    def get_item(self, index, rng):
        path = self.paths[index]
        image = load_rgb(path)
        self.check_fits_crop(path, image.size)
        rgb = transform_image(image, self.opt, get_params(self.opt, image.size, rng), convert=False)
        lab = torch.from_numpy(rgb_to_lab(np.asarray(rgb)).astype(np.float32)).permute(2, 0, 1).contiguous()
        return {"A": lab[[0]] / 50.0 - 1.0, "B": lab[[1, 2]] / 110.0, "A_paths": path, "B_paths": path}
