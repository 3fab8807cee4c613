"""``--model test``: one generator, one direction, for single-folder inference (e.g. one CycleGAN side).

Loads ``{epoch}_net_G{model_suffix}.pth``, so ``--model_suffix _A`` runs a CycleGAN's G_A.
"""

from fastp2p import networks
from fastp2p.models.base_model import BaseModel


class TestModel(BaseModel):
    __test__ = False  # not a pytest test class despite its name

    def __init__(self, opt):
        if opt.isTrain:
            raise ValueError("--model test only runs inference; train with --model pix2pix or cycle_gan")
        if opt.dataset_mode != "single":
            raise ValueError(f"--model test reads one folder of images and needs --dataset_mode single, "
                             f"not {opt.dataset_mode!r}")
        super().__init__(opt)
        self.visual_names = ["real", "fake"]
        self.model_names = ["G" + opt.model_suffix]
        self.netG = networks.define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm,
                                      not opt.no_dropout).to(self.device)
        setattr(self, "netG" + opt.model_suffix, self.netG)  # named as the file it loads

    def set_input(self, data):
        self.real = data["A"].to(self.device, non_blocking=True)
        self.image_paths = data["A_paths"]
        self.check_image_size(self.real)

    def forward(self):
        self.fake = self.netG(self.real)

    def optimize_parameters(self):
        raise RuntimeError("--model test has no training step")
