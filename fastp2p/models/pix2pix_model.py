"""pix2pix as the reference trainer builds it: a conditional GAN with an L1 term, D updated before G each iteration."""

import torch

from fastp2p import networks
from fastp2p.checkpoint import unwrap
from fastp2p.flag_types import finite_non_negative_float
from fastp2p.models.accumulation import buffers_kept
from fastp2p.models.base_model import BaseModel


class Pix2PixModel(BaseModel):
    @staticmethod
    def modify_commandline_options(parser, is_train):
        """The reference's defaults for pix2pix (BatchNorm U-Net on aligned pairs, vanilla GAN, no pool) and its L1
        weight."""
        parser.set_defaults(norm="batch", netG="unet_256", dataset_mode="aligned")
        if is_train:
            parser.set_defaults(pool_size=0, gan_mode="vanilla")
            parser.add_argument("--lambda_L1", type=finite_non_negative_float, default=100.0, help="weight for L1 loss")
        return parser

    def __init__(self, opt):
        super().__init__(opt)
        self.loss_names = ["G_GAN", "G_L1", "D_real", "D_fake"]
        self.visual_names = ["real_A", "fake_B", "real_B"]
        self.model_names = ["G", "D"] if self.isTrain else ["G"]
        self.netG = networks.define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm,
                                      not opt.no_dropout).to(self.device)
        if self.isTrain:
            # D judges (input, output) pairs, so it sees both images' channels
            self.netD = networks.define_D(opt.input_nc + opt.output_nc, opt.ndf, opt.netD, opt.n_layers_D,
                                          opt.norm).to(self.device)
            self.criterionGAN = self.runtime.gan_loss(opt.gan_mode).to(self.device)
            self.criterionL1 = self.runtime.l1_loss()

    def trained_parameters(self):
        return [("G", list(self.netG.parameters())), ("D", list(self.netD.parameters()))]

    def forward(self):
        self.fake_B = self.netG(self.real_A)

    def backward_D(self, weight=1.0):
        fake_AB = torch.cat((self.real_A, self.fake_B), 1).detach()  # no gradient into G from D's step
        pred_fake, pred_real = self.run_passes(self.netD, fake_AB, torch.cat((self.real_A, self.real_B), 1))
        self.loss_D_fake = self.criterionGAN(pred_fake, False)
        self.loss_D_real = self.criterionGAN(pred_real, True)
        self.loss_D = (self.loss_D_fake + self.loss_D_real) * 0.5
        self.backward(self.loss_D, weight)

    def backward_G(self, weight=1.0):
        # D is frozen here: call it outside any DDP wrapper, so no gradient reduction is left pending
        netD = unwrap(self.netD)
        self.loss_G_GAN = self.criterionGAN(netD(torch.cat((self.real_A, self.fake_B), 1)), True)
        self.loss_G_L1 = self.criterionL1(self.fake_B, self.real_B) * self.opt.lambda_L1
        self.loss_G = self.loss_G_GAN + self.loss_G_L1
        self.backward(self.loss_G, weight)

    def optimize_parameters(self):
        self.forward()
        self.set_requires_grad(self.netD, True)
        self.optimizer_D.zero_grad()
        self.backward_D()
        self.step(self.optimizer_D)
        self.set_requires_grad(self.netD, False)
        self.optimizer_G.zero_grad()
        self.backward_G()
        self.step(self.optimizer_G)

    def optimize_accumulated(self, micro):
        """D's step on every micro-batch's fake, then G's through the updated D. No generator graph is kept between
        the two phases: G's forward runs again per micro-batch with the dropout draws of its first run, and without
        counting twice in BatchNorm's running statistics."""
        self.set_requires_grad(self.netD, True)
        self.optimizer_D.zero_grad()
        for _, weight in micro.each(syncing=[self.netD], rng="record"):
            with torch.no_grad():
                self.forward()
            self.backward_D(weight)
            micro.add_losses(["D_fake", "D_real"], weight)
        self.step(self.optimizer_D)
        self.set_requires_grad(self.netD, False)
        self.optimizer_G.zero_grad()
        with buffers_kept(unwrap(self.netG)):
            for _, weight in micro.each(syncing=[self.netG], rng="replay"):
                self.forward()
                self.backward_G(weight)
                micro.add_losses(["G_GAN", "G_L1"], weight)
        self.step(self.optimizer_G)
        micro.finish()
