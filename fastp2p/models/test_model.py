"""``--model test``: one generator, one direction, for single-folder inference (e.g. one CycleGAN side).

Loads ``{epoch}_net_G{model_suffix}.pth``, so ``--model_suffix _A`` runs a CycleGAN's G_A.
"""

import os

from fastp2p import networks
from fastp2p.errors import CheckpointError, OptionError
from fastp2p.models.base_model import BaseModel


class TestModel(BaseModel):
    __test__ = False  # not a pytest test class despite its name

    @staticmethod
    def modify_commandline_options(parser, is_train):
        if is_train:
            raise OptionError("--model test is for python -m fastp2p.test only; train with pix2pix or cycle_gan")
        parser.set_defaults(dataset_mode="single")
        parser.add_argument("--model_suffix", default="", help="loads [epoch]_net_G[model_suffix].pth, e.g. _A")
        return parser

    def __init__(self, opt):
        if opt.isTrain:
            raise ValueError("--model test only runs inference; train with --model pix2pix or cycle_gan")
        if opt.dataset_mode != "single":
            raise ValueError(f"--model test reads one folder of images and needs --dataset_mode single, "
                             f"not {opt.dataset_mode!r}")
        super().__init__(opt)
        self.visual_names = ["real", "fake"]
        self.model_names = ["G" + opt.model_suffix]  # named as the file it loads
        generator = networks.define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm,
                                      not opt.no_dropout).to(self.device)
        setattr(self, "netG" + opt.model_suffix, generator)

    def load_networks(self, epoch):
        """A missing file names the --model_suffix values the folder holds for this epoch (a CycleGAN run saves
        G_A and G_B, never G) instead of only 'not found'."""
        path = self.network_path(epoch, "G" + self.opt.model_suffix)
        if not os.path.isfile(path):
            start = os.path.basename(self.network_path(epoch, "G"))[: -len(".pth")]
            entries = os.listdir(self.save_dir) if os.path.isdir(self.save_dir) else []
            found = sorted(entry[len(start):-len(".pth")] for entry in entries
                           if entry.startswith(start) and entry.endswith(".pth"))
            if found:
                choices = " or ".join(f"--model_suffix {suffix}" if suffix else "no --model_suffix" for suffix in found)
                raise CheckpointError(f"checkpoint not found: {path}; {self.save_dir} holds "
                                      f"{', '.join(start + suffix + '.pth' for suffix in found)}: give {choices}")
        super().load_networks(epoch)

    def set_input(self, data):
        self.real = data["A"].to(self.device, non_blocking=True)
        self.image_paths = data["A_paths"]
        self.check_image_size(self.real)

    def forward(self):
        self.fake = self.generator()(self.real)

    def optimize_parameters(self):
        raise RuntimeError("--model test has no training step")
