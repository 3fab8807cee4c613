"""``--model template``: the reference's template model, a regression baseline and the starting point for a model of
one's own: one generator that learns min ||G(A) - B||_1, weighted by ``--lambda_regression``, on aligned pairs.

As in the reference: dataset_mode aligned by default, the flag ``--lambda_regression``, the networks, losses and
visuals named as its own (``G``; ``data_A``, ``data_B``, ``output``), ``latest_net_G.pth``. Its generator has the
reference's architecture by default (the reference builds it with BatchNorm and no dropout whatever the flags say;
here those are the defaults, and --norm / --no_dropout are honoured). It is written the engine's way
(trained_parameters, self.backward, self.step: docs/extending.md), so every fast path applies to it.
"""

from fastp2p import networks
from fastp2p.flag_types import finite_non_negative_float
from fastp2p.models.base_model import BaseModel


class TemplateModel(BaseModel):
    @staticmethod
    def modify_commandline_options(parser, is_train):
        parser.set_defaults(dataset_mode="aligned", norm="batch", no_dropout=True)
        if is_train:
            parser.add_argument("--lambda_regression", type=finite_non_negative_float, default=1.0,
                                help="weight for the regression loss")
        return parser

    def __init__(self, opt):
        super().__init__(opt)
        self.loss_names = ["G"]
        self.visual_names = ["data_A", "data_B", "output"]
        self.model_names = ["G"]
        self.netG = networks.define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, opt.norm,
                                      not opt.no_dropout).to(self.device)
        if self.isTrain:
            self.criterionLoss = self.runtime.l1_loss()

    def trained_parameters(self):
        return [("G", list(self.netG.parameters()))]

    def set_input(self, input):
        a_to_b = self.opt.direction == "AtoB"
        layout = self.runtime.memory_format
        self.data_A = input["A" if a_to_b else "B"].to(self.device, memory_format=layout, non_blocking=True)
        self.data_B = input["B" if a_to_b else "A"].to(self.device, memory_format=layout, non_blocking=True)
        self.image_paths = input["A_paths" if a_to_b else "B_paths"]
        self.check_image_size(self.data_A)

    def forward(self):
        self.output = self.netG(self.data_A)

    def optimize_parameters(self):
        self.forward()
        self.optimizer_G.zero_grad()
        self.loss_G = self.criterionLoss(self.output, self.data_B) * self.opt.lambda_regression
        self.backward(self.loss_G)
        self.step(self.optimizer_G)
