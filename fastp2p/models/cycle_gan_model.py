"""CycleGAN as the reference trainer builds it: two generators and two discriminators; G_A and G_B are updated
before D_A and D_B.

G_A maps A to B and is judged by D_A; G_B maps B to A and is judged by D_B. Each generator pair shares
one optimizer, as does each discriminator pair. D sees fakes through an ImagePool (``--pool_size``).
"""

from fastp2p import networks
from fastp2p.checkpoint import unwrap
from fastp2p.flag_types import finite_non_negative_float
from fastp2p.models.base_model import BaseModel


class CycleGANModel(BaseModel):
    @staticmethod
    def modify_commandline_options(parser, is_train):
        """The reference's: no dropout by default; the cycle and identity loss weights."""
        parser.set_defaults(no_dropout=True)
        if is_train:
            parser.add_argument("--lambda_A", type=finite_non_negative_float, default=10.0,
                                help="weight for cycle loss (A -> B -> A)")
            parser.add_argument("--lambda_B", type=finite_non_negative_float, default=10.0,
                                help="weight for cycle loss (B -> A -> B)")
            parser.add_argument("--lambda_identity", type=finite_non_negative_float, default=0.5,
                                help="identity loss weight, relative to lambda_A/lambda_B")
        return parser

    def __init__(self, opt):
        super().__init__(opt)
        self.loss_names = ["D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B"]
        visuals_A = ["real_A", "fake_B", "rec_A"]
        visuals_B = ["real_B", "fake_A", "rec_B"]
        if self.isTrain and opt.lambda_identity > 0.0:
            visuals_A.append("idt_B")
            visuals_B.append("idt_A")
        self.visual_names = visuals_A + visuals_B
        self.model_names = ["G_A", "G_B", "D_A", "D_B"] if self.isTrain else ["G_A", "G_B"]
        use_dropout = not opt.no_dropout
        self.netG_A = networks.define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm,
                                        use_dropout).to(self.device)
        self.netG_B = networks.define_G(opt.output_nc, opt.input_nc, opt.ngf, opt.netG, opt.norm,
                                        use_dropout).to(self.device)
        if self.isTrain:
            if opt.lambda_identity > 0.0 and opt.input_nc != opt.output_nc:
                raise ValueError(f"--lambda_identity {opt.lambda_identity} compares G_A(B) with B, which needs "
                                 f"input_nc == output_nc (got {opt.input_nc} and {opt.output_nc}); "
                                 "use --lambda_identity 0")
            self.netD_A = networks.define_D(opt.output_nc, opt.ndf, opt.netD, opt.n_layers_D, opt.norm).to(self.device)
            self.netD_B = networks.define_D(opt.input_nc, opt.ndf, opt.netD, opt.n_layers_D, opt.norm).to(self.device)
            self.fake_A_pool = self.runtime.image_pool(opt.pool_size)
            self.fake_B_pool = self.runtime.image_pool(opt.pool_size)
            self.pool_names = ["fake_A_pool", "fake_B_pool"]
            self.criterionGAN = self.runtime.gan_loss(opt.gan_mode).to(self.device)
            self.criterionCycle = self.runtime.l1_loss()
            self.criterionIdt = self.runtime.l1_loss()

    def trained_parameters(self):
        return [("G", [*self.netG_A.parameters(), *self.netG_B.parameters()]),
                ("D", [*self.netD_A.parameters(), *self.netD_B.parameters()])]

    def identity_in_forward(self):
        """With batched passes the identity images join each generator's first pass; the reference (and
        this model otherwise) computes them in backward_G, after the cycle passes."""
        return self.runtime.batch_passes and self.isTrain and self.opt.lambda_identity > 0

    def forward(self):
        if self.runtime.batch_passes and self.isTrain:
            # G_A's passes, then G_B's, each as one batch: G_B takes G_A's output (the A cycle's reconstruction)
            # with its own input, so three generator forwards run instead of four; the identity images join the
            # first two
            idt = self.identity_in_forward()
            self.fake_B, *idt_A = self.run_passes(self.netG_A, self.real_A, *([self.real_B] if idt else []))
            self.fake_A, self.rec_A, *idt_B = self.run_passes(self.netG_B, self.real_B, self.fake_B,
                                                              *([self.real_A] if idt else []))
            self.rec_B = self.netG_A(self.fake_A)
            if idt:
                (self.idt_A,), (self.idt_B,) = idt_A, idt_B
            return
        self.fake_B = self.netG_A(self.real_A)
        self.rec_A = self.netG_B(self.fake_B)
        self.fake_A = self.netG_B(self.real_B)
        self.rec_B = self.netG_A(self.fake_A)

    def backward_D_basic(self, netD, real, fake, weight=1.0):
        """Half the sum of D's real and (detached) fake losses, backpropagated into D only (weighted: ``weight``)."""
        pred_real, pred_fake = self.run_passes(netD, real, fake.detach())
        loss_D_real = self.criterionGAN(pred_real, True)
        loss_D_fake = self.criterionGAN(pred_fake, False)
        loss_D = (loss_D_real + loss_D_fake) * 0.5
        self.backward(loss_D, weight)
        return loss_D

    def backward_D_A(self):
        fake_B = self.fake_B_pool.query(self.fake_B)
        self.loss_D_A = self.backward_D_basic(self.netD_A, self.real_B, fake_B)

    def backward_D_B(self):
        fake_A = self.fake_A_pool.query(self.fake_A)
        self.loss_D_B = self.backward_D_basic(self.netD_B, self.real_A, fake_A)

    def backward_G(self, weight=1.0):
        opt = self.opt
        if opt.lambda_identity > 0:
            # G_A should leave an image that already looks like B unchanged, and G_B likewise for A
            if not self.identity_in_forward():
                self.idt_A = self.netG_A(self.real_B)
                self.idt_B = self.netG_B(self.real_A)
            self.loss_idt_A = self.criterionIdt(self.idt_A, self.real_B) * opt.lambda_B * opt.lambda_identity
            self.loss_idt_B = self.criterionIdt(self.idt_B, self.real_A) * opt.lambda_A * opt.lambda_identity
        else:
            self.loss_idt_A = 0
            self.loss_idt_B = 0
        # D_A and D_B are frozen here: call them outside any DDP wrapper, so no reduction is left pending
        self.loss_G_A = self.criterionGAN(unwrap(self.netD_A)(self.fake_B), True)
        self.loss_G_B = self.criterionGAN(unwrap(self.netD_B)(self.fake_A), True)
        self.loss_cycle_A = self.criterionCycle(self.rec_A, self.real_A) * opt.lambda_A
        self.loss_cycle_B = self.criterionCycle(self.rec_B, self.real_B) * opt.lambda_B
        self.loss_G = (self.loss_G_A + self.loss_G_B + self.loss_cycle_A + self.loss_cycle_B
                       + self.loss_idt_A + self.loss_idt_B)
        self.backward(self.loss_G, weight)

    def optimize_parameters(self):
        self.forward()
        self.set_requires_grad([self.netD_A, self.netD_B], False)
        self.optimizer_G.zero_grad()
        self.backward_G()
        self.step(self.optimizer_G)
        self.set_requires_grad([self.netD_A, self.netD_B], True)
        self.optimizer_D.zero_grad()
        self.run_independent(self.backward_D_A, self.backward_D_B)  # their own nets, inputs and gradients
        self.step(self.optimizer_D)

    def optimize_accumulated(self, micro):
        """G's step over every micro-batch (D frozen), then D's on their fakes, kept as images only. Each pool takes
        the micro-batches' fakes in order, D_A's over all of them before D_B's, as one query over the larger batch
        takes its images one by one: the same draws, so the same images come back."""
        self.set_requires_grad([self.netD_A, self.netD_B], False)
        self.optimizer_G.zero_grad()
        images = []
        for _, weight in micro.each(syncing=[self.netG_A, self.netG_B]):
            self.forward()
            self.backward_G(weight)
            micro.add_losses(["G_A", "G_B", "cycle_A", "cycle_B", "idt_A", "idt_B"], weight)
            images.append((self.real_A, self.real_B, self.fake_A.detach(), self.fake_B.detach()))
        self.step(self.optimizer_G)
        self.set_requires_grad([self.netD_A, self.netD_B], True)
        self.optimizer_D.zero_grad()

        def backward_D_A():
            for index, weight in micro.each(syncing=[self.netD_A], set_input=False):
                _, real_B, _, fake_B = images[index]
                self.loss_D_A = self.backward_D_basic(self.netD_A, real_B, self.fake_B_pool.query(fake_B), weight)
                micro.add_losses(["D_A"], weight)

        def backward_D_B():
            for index, weight in micro.each(syncing=[self.netD_B], set_input=False):
                real_A, _, fake_A, _ = images[index]
                self.loss_D_B = self.backward_D_basic(self.netD_B, real_A, self.fake_A_pool.query(fake_A), weight)
                micro.add_losses(["D_B"], weight)

        self.run_independent(backward_D_A, backward_D_B)
        self.step(self.optimizer_D)
        micro.finish()
