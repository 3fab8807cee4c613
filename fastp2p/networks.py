"""Generators, discriminators, norm layers, weight init and LR schedulers of the reference trainer.

Every network reproduces junyanz/pytorch-CycleGAN-and-pix2pix module for module, so state_dict keys and
parameter counts match its checkpoints. The
layers of each net live in ``nn.Sequential`` lists on purpose: the fast engine later swaps
(norm, activation) pairs inside them for fused modules at the same indices, which keeps the keys.

define_G / define_D return un-initialized nets, as the reference's DDP-era code does; weights are
drawn in ``BaseModel.setup`` so the RNG order (G before D) matches the reference. They also take the reference's
``init_type``, ``init_gain`` and ``gpu_ids`` arguments, which a model written for it passes: the net is then on the
model's device, and setup draws its weights with the init asked for. GANLoss and cal_gradient_penalty are here
too, where the reference's models find them.
"""

import functools
import weakref

import torch
from torch import nn
from torch.nn import init
from torch.optim import lr_scheduler

from fastp2p.distributed import print_main
from fastp2p.losses import GANLoss, cal_gradient_penalty  # noqa: F401  (where the reference's models find them)

REQUESTED_INIT = weakref.WeakKeyDictionary()
"""net -> (init_type, init_gain) a model asked define_G/define_D for; BaseModel.setup draws the weights with it"""

NORM_TYPES = ("batch", "instance", "none", "syncbatch")
GENERATORS = ("resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128")
DISCRIMINATORS = ("basic", "n_layers", "pixel")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")
LR_POLICIES = ("linear", "step", "plateau", "cosine")
UNET_DOWNS = {"unet_128": 7, "unet_256": 8}
"""stride-2 levels of each U-Net"""


def _unknown(kind, value, choices):
    return ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(choices)}")


def no_norm(num_features):
    """``--norm none``: an Identity in the norm's slot, so layer indices stay those of the other norms."""
    return nn.Identity()


def get_norm_layer(norm_type="instance"):
    """A factory ``norm_layer(num_channels) -> nn.Module`` for ``--norm``."""
    if norm_type == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm_type == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm_type == "syncbatch":
        return functools.partial(nn.SyncBatchNorm, affine=True, track_running_stats=True)
    if norm_type == "none":
        return no_norm
    raise _unknown("norm", norm_type, NORM_TYPES)


def conv_bias_before_norm(norm_layer):
    """Whether a conv followed by ``norm_layer`` carries a bias: only under InstanceNorm.

    BatchNorm's shift makes a bias redundant. Under ``--norm none`` the reference also drops it although
    no norm follows (its test compares the factory to InstanceNorm2d); kept for checkpoint compatibility.
    """
    return getattr(norm_layer, "func", norm_layer) is nn.InstanceNorm2d


def init_weights(net, init_type="normal", init_gain=0.02):
    """Draw conv/linear weights and BatchNorm2d scales in the reference's module order (post-order)."""
    if init_type not in INIT_TYPES:
        raise _unknown("init_type", init_type, INIT_TYPES)

    def init_module(m):
        classname = type(m).__name__
        if hasattr(m, "weight") and ("Conv" in classname or "Linear" in classname):
            if init_type == "normal":
                init.normal_(m.weight.data, 0.0, init_gain)
            elif init_type == "xavier":
                init.xavier_normal_(m.weight.data, gain=init_gain)
            elif init_type == "kaiming":
                init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
            else:
                init.orthogonal_(m.weight.data, gain=init_gain)
            if getattr(m, "bias", None) is not None:
                init.constant_(m.bias.data, 0.0)
        elif "BatchNorm2d" in classname:  # SyncBatchNorm does not match, as in the reference
            init.normal_(m.weight.data, 1.0, init_gain)
            init.constant_(m.bias.data, 0.0)

    print_main(f"initialize network with {init_type}")
    net.apply(init_module)
    return net


def count_parameters(net):
    return sum(p.numel() for p in net.parameters())


def requested_init(net, init_type, init_gain, gpu_ids):
    """``net`` as the reference's define_G/define_D return it when called with its ``gpu_ids``: on the device of the
    model being built; the init asked for is kept for setup."""
    from fastp2p.models.runtime import current_runtime  # fastp2p.models imports this module

    if init_type is not None or init_gain is not None:
        REQUESTED_INIT[net] = (init_type, init_gain)
    return net.to(current_runtime().device) if gpu_ids is not None else net


def init_of(net, init_type, init_gain):
    """The (init_type, init_gain) to draw ``net``'s weights with: the model's request where it made one, else
    these (the flags)."""
    asked_type, asked_gain = REQUESTED_INIT.get(net, (None, None))
    return (init_type if asked_type is None else asked_type), (init_gain if asked_gain is None else asked_gain)


def define_G(input_nc, output_nc, ngf, netG, norm="batch", use_dropout=False, init_type=None, init_gain=None,
             gpu_ids=None):
    """The generator named by ``--netG`` (un-initialized; see the module docstring for the last three)."""
    norm_layer = get_norm_layer(norm)
    if netG == "resnet_9blocks":
        net = ResnetGenerator(input_nc, output_nc, ngf, norm_layer, use_dropout, n_blocks=9)
    elif netG == "resnet_6blocks":
        net = ResnetGenerator(input_nc, output_nc, ngf, norm_layer, use_dropout, n_blocks=6)
    elif netG in UNET_DOWNS:
        net = UnetGenerator(input_nc, output_nc, UNET_DOWNS[netG], ngf, norm_layer, use_dropout)
    else:
        raise _unknown("netG", netG, GENERATORS)
    return requested_init(net, init_type, init_gain, gpu_ids)


def image_size_problem(opt, height, width, discriminator):
    """Why the networks of ``opt`` cannot take ``height`` x ``width`` images, or None.

    A U-Net halves the image at each of its levels and concatenates every level with its upsampled inner
    level, so both sides must be multiples of 2**levels; the ResNet generator halves twice and doubles twice
    (multiples of 4), and its residual blocks' reflection pads need 2 pixels (so at least 8). The PatchGAN's
    stride-2 layers and its two 4x4 stride-1 convs leave no logit below 3 * 2**n_layers. Without this check such
    sizes fail deep inside a conv, a norm or the loss with a shape message that names no option.
    """
    multiple, smallest = (2 ** UNET_DOWNS[opt.netG],) * 2 if opt.netG in UNET_DOWNS else (4, 8)
    if height % multiple or width % multiple or min(height, width) < smallest:
        return f"--netG {opt.netG} needs a height and width that are multiples of {multiple}, at least {smallest}"
    if discriminator and opt.netD != "pixel":
        smallest = 3 * 2 ** (3 if opt.netD == "basic" else opt.n_layers_D)
        if min(height, width) < smallest:
            return f"--netD {opt.netD} needs a height and width of at least {smallest}"
    return None


def define_D(input_nc, ndf, netD, n_layers_D=3, norm="batch", init_type=None, init_gain=None, gpu_ids=None):
    """The discriminator named by ``--netD`` (un-initialized; see the module docstring for the last three); 'basic'
    is the 70x70 PatchGAN."""
    norm_layer = get_norm_layer(norm)
    if netD == "basic":
        net = NLayerDiscriminator(input_nc, ndf, n_layers=3, norm_layer=norm_layer)
    elif netD == "n_layers":
        net = NLayerDiscriminator(input_nc, ndf, n_layers_D, norm_layer=norm_layer)
    elif netD == "pixel":
        net = PixelDiscriminator(input_nc, ndf, norm_layer=norm_layer)
    else:
        raise _unknown("netD", netD, DISCRIMINATORS)
    return requested_init(net, init_type, init_gain, gpu_ids)


def get_scheduler(optimizer, opt):
    """The ``--lr_policy`` scheduler, stepped once per epoch (plateau with the model's metric)."""
    if opt.lr_policy == "linear":

        def keep_then_decay(epoch):
            return 1.0 - max(0, epoch + opt.epoch_count - opt.n_epochs) / float(opt.n_epochs_decay + 1)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=keep_then_decay)
    if opt.lr_policy == "step":
        return lr_scheduler.StepLR(optimizer, step_size=opt.lr_decay_iters, gamma=0.1)
    if opt.lr_policy == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.2, threshold=0.01, patience=5)
    if opt.lr_policy == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=opt.n_epochs, eta_min=0)
    raise _unknown("lr_policy", opt.lr_policy, LR_POLICIES)


class ResnetBlock(nn.Module):
    """Two 3x3 convs with a skip: ``x + conv_block(x)``, no activation after the sum."""

    def __init__(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        super().__init__()
        self.conv_block = self.build_conv_block(dim, padding_type, norm_layer, use_dropout, use_bias)

    @staticmethod
    def _padded_conv(dim, padding_type, use_bias):
        if padding_type == "reflect":
            return [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias)]
        if padding_type == "replicate":
            return [nn.ReplicationPad2d(1), nn.Conv2d(dim, dim, kernel_size=3, padding=0, bias=use_bias)]
        if padding_type == "zero":
            return [nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=use_bias)]
        raise _unknown("padding_type", padding_type, ("reflect", "replicate", "zero"))

    def build_conv_block(self, dim, padding_type, norm_layer, use_dropout, use_bias):
        layers = self._padded_conv(dim, padding_type, use_bias) + [norm_layer(dim), nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))
        layers += self._padded_conv(dim, padding_type, use_bias) + [norm_layer(dim)]
        return nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Two stride-2 downsamplings, ``n_blocks`` ResnetBlocks at ngf*4 channels, two upsamplings."""

    def __init__(self, input_nc, output_nc, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False, n_blocks=6,
                 padding_type="reflect"):
        if n_blocks < 0:
            raise ValueError(f"n_blocks must be >= 0, got {n_blocks}")
        super().__init__()
        use_bias = conv_bias_before_norm(norm_layer)
        layers = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=use_bias),
            norm_layer(ngf),
            nn.ReLU(True),
        ]
        for mult in (1, 2):
            layers += [
                nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=use_bias),
                norm_layer(ngf * mult * 2),
                nn.ReLU(True),
            ]
        for _ in range(n_blocks):
            layers.append(ResnetBlock(ngf * 4, padding_type, norm_layer, use_dropout, use_bias))
        for mult in (4, 2):
            layers += [
                nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, kernel_size=3, stride=2, padding=1,
                                   output_padding=1, bias=use_bias),
                norm_layer(ngf * mult // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, input):
        return self.model(input)


class UnetGenerator(nn.Module):
    """U-Net with ``num_downs`` stride-2 levels: 2**num_downs must divide the image size (256 for 8)."""

    def __init__(self, input_nc, output_nc, num_downs, ngf=64, norm_layer=nn.BatchNorm2d, use_dropout=False):
        if num_downs < 5:
            raise ValueError(f"a UNet needs num_downs >= 5, got {num_downs}")
        super().__init__()
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm_layer=norm_layer, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm_layer=norm_layer,
                                            use_dropout=use_dropout)
        for outer, inner in ((ngf * 4, ngf * 8), (ngf * 2, ngf * 4), (ngf, ngf * 2)):
            block = UnetSkipConnectionBlock(outer, inner, submodule=block, norm_layer=norm_layer)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm_layer=norm_layer)

    def forward(self, input):
        return self.model(input)


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: down, the inner levels, up; all but the outermost concatenate [input, output].

    The reference's down LeakyReLU is in-place and so overwrites the skip half with LeakyReLU(x); the
    parent's ReLU then makes that identical to keeping x (ReLU(LeakyReLU(x)) = ReLU(x)), so here it is not
    in-place and the
    skip carries x unchanged.
    """

    def __init__(self, outer_nc, inner_nc, input_nc=None, submodule=None, outermost=False, innermost=False,
                 norm_layer=nn.BatchNorm2d, use_dropout=False):
        super().__init__()
        self.outermost = outermost
        use_bias = conv_bias_before_norm(norm_layer)
        if input_nc is None:
            input_nc = outer_nc
        # also the outermost downconv, which no norm follows, takes the norm's bias rule (reference layout)
        downconv = nn.Conv2d(input_nc, inner_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1)
            layers = [downconv, submodule, nn.ReLU(True), upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2), downconv, nn.ReLU(True), upconv, norm_layer(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, kernel_size=4, stride=2, padding=1, bias=use_bias)
            layers = [nn.LeakyReLU(0.2), downconv, norm_layer(inner_nc), submodule, nn.ReLU(True), upconv,
                      norm_layer(outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: ``n_layers`` stride-2 convs, one stride-1 conv, then a 1-channel logit map (no sigmoid)."""

    def __init__(self, input_nc, ndf=64, n_layers=3, norm_layer=nn.BatchNorm2d):
        if n_layers < 1:
            raise ValueError(f"n_layers_D must be >= 1, got {n_layers}")
        super().__init__()
        use_bias = conv_bias_before_norm(norm_layer)
        layers = [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev_mult, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev_mult, ndf * mult, kernel_size=4, stride=stride, padding=1, bias=use_bias),
                norm_layer(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, input):
        return self.model(input)


class PixelDiscriminator(nn.Module):
    """1x1 PixelGAN: a real/fake logit per pixel."""

    def __init__(self, input_nc, ndf=64, norm_layer=nn.BatchNorm2d):
        super().__init__()
        use_bias = conv_bias_before_norm(norm_layer)
        self.net = nn.Sequential(
            nn.Conv2d(input_nc, ndf, kernel_size=1, stride=1, padding=0),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf, ndf * 2, kernel_size=1, stride=1, padding=0, bias=use_bias),
            norm_layer(ndf * 2),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * 2, 1, kernel_size=1, stride=1, padding=0, bias=use_bias),
        )

    def forward(self, input):
        return self.net(input)
