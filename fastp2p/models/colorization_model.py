"""``--model colorization``: pix2pix from the L channel of Lab images to their a and b channels, as the reference has
it: pix2pix's networks, losses, flags and checkpoint files (G: 1 -> 2 channels, D on the 3 channels of L and ab), with
``--dataset_mode colorization`` by default, whose defaults give ``--input_nc 1 --output_nc 2``.

Its visuals are the reference's: ``real_A`` (L, shown gray), and the target and the output converted back to RGB
(``real_B_rgb``, ``fake_B_rgb``) the reference's way: Lab rescaled in float32, converted in float64 (data/lab.py),
times 255 and truncated to uint8. fastp2p's visuals are [-1, 1] tensors, so each of those bytes is held at the centre
of its bin ((v + 0.5) / 127.5 - 1), which the result images' uint8 conversion truncates back to v: the PNGs have the
bytes the reference writes for the same generator output.
"""

import numpy as np
import torch

from fastp2p.data.lab import lab_to_rgb
from fastp2p.models.pix2pix_model import Pix2PixModel


def lab_visual(lightness, ab):
    """RGB visuals of a batch of L in [-1, 1] and ab in about [-1, 1]: a float32 NCHW CPU tensor whose uint8
    conversion gives the reference's bytes (see the module docstring)."""
    lab = torch.cat([(lightness.float() + 1.0) * 50.0, ab.float() * 110.0], dim=1).detach().cpu()
    rgb = [np.floor(lab_to_rgb(np.transpose(image.numpy().astype(np.float64), (1, 2, 0))) * 255) for image in lab]
    centred = (np.stack(rgb).transpose(0, 3, 1, 2) + 0.5) / 127.5 - 1.0
    return torch.from_numpy(centred.astype(np.float32))


class ColorizationModel(Pix2PixModel):
    @staticmethod
    def modify_commandline_options(parser, is_train):
        Pix2PixModel.modify_commandline_options(parser, is_train)
        parser.set_defaults(dataset_mode="colorization")
        return parser

    def __init__(self, opt):
        super().__init__(opt)
        self.visual_names = ["real_A", "real_B_rgb", "fake_B_rgb"]

    def compute_visuals(self):
        self.real_B_rgb = lab_visual(self.real_A, self.real_B)
        self.fake_B_rgb = lab_visual(self.real_A, self.fake_B)
