"""An independent restatement of the reference trainer's networks, written from the reference trainer's
network definitions and checkpoint keys.

It is built differently from fastp2p.networks on purpose (recursive builders, explicit per-level layer
lists, the reference's in-place activations) so that a shared mistake is unlikely. Tests load its
state_dicts into fastp2p's nets and compare outputs; the module paths must therefore be the reference's.
"""

import torch
from torch import nn


def make_norm(norm, channels):
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels)
    return nn.Identity()


def biased(norm):
    """Conv bias before a norm exists under InstanceNorm only (and, per the quirk, not under 'none')."""
    return norm == "instance"


class Seq(nn.Module):
    """A module holding one nn.Sequential under ``attr`` ('model', 'conv_block' or 'net')."""

    def __init__(self, attr, layers, skip=None):
        super().__init__()
        self.attr = attr
        self.skip = skip
        setattr(self, attr, nn.Sequential(*layers))

    def forward(self, x):
        y = getattr(self, self.attr)(x)
        if self.skip == "cat":
            return torch.cat([x, y], dim=1)
        if self.skip == "add":
            return x + y
        return y


class UnetLevel(Seq):
    def __init__(self, layers, outermost):
        super().__init__("model", layers, skip=None if outermost else "cat")


class UnetRoot(nn.Module):
    def __init__(self, level):
        super().__init__()
        self.model = level

    def forward(self, x):
        return self.model(x)


def unet(in_ch, out_ch, levels, ngf, norm, dropout):
    """Channel widths per level from the outside in, then built from the inside out."""
    widths = [ngf, ngf * 2, ngf * 4, ngf * 8] + [ngf * 8] * (levels - 4)
    b = biased(norm)

    def level(depth):
        outer = out_ch if depth == 0 else widths[depth - 1]
        inner = widths[depth]
        cin = in_ch if depth == 0 else outer
        if depth == levels - 1:
            return UnetLevel([
                nn.LeakyReLU(0.2, True),
                nn.Conv2d(cin, inner, 4, 2, 1, bias=b),
                nn.ReLU(True),
                nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=b),
                make_norm(norm, outer),
            ], outermost=False)
        child = level(depth + 1)
        if depth == 0:
            return UnetLevel([
                nn.Conv2d(cin, inner, 4, 2, 1, bias=b),  # the bias rule applies here too, with no norm after
                child,
                nn.ReLU(True),
                nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1),
                nn.Tanh(),
            ], outermost=True)
        layers = [
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(cin, inner, 4, 2, 1, bias=b),
            make_norm(norm, inner),
            child,
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1, bias=b),
            make_norm(norm, outer),
        ]
        # dropout sits in the ngf*8 middle levels only: depths 4 .. levels-2
        if dropout and depth >= 4:
            layers.append(nn.Dropout(0.5))
        return UnetLevel(layers, outermost=False)

    return UnetRoot(level(0))


def resnet(in_ch, out_ch, n_blocks, ngf, norm, dropout):
    b = biased(norm)
    d = 4 * ngf

    def block():
        half = [nn.ReflectionPad2d(1), nn.Conv2d(d, d, 3, bias=b), make_norm(norm, d)]
        layers = half + [nn.ReLU(True)] + ([nn.Dropout(0.5)] if dropout else []) + [
            nn.ReflectionPad2d(1), nn.Conv2d(d, d, 3, bias=b), make_norm(norm, d)]
        return Seq("conv_block", layers, skip="add")

    layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, bias=b), make_norm(norm, ngf), nn.ReLU(True),
              nn.Conv2d(ngf, 2 * ngf, 3, 2, 1, bias=b), make_norm(norm, 2 * ngf), nn.ReLU(True),
              nn.Conv2d(2 * ngf, 4 * ngf, 3, 2, 1, bias=b), make_norm(norm, 4 * ngf), nn.ReLU(True)]
    layers += [block() for _ in range(n_blocks)]
    layers += [nn.ConvTranspose2d(4 * ngf, 2 * ngf, 3, 2, 1, output_padding=1, bias=b), make_norm(norm, 2 * ngf),
               nn.ReLU(True),
               nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, output_padding=1, bias=b), make_norm(norm, ngf),
               nn.ReLU(True),
               nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_ch, 7), nn.Tanh()]
    return Seq("model", layers)


def patch_discriminator(in_ch, ndf, n_layers, norm):
    b = biased(norm)
    widths = [ndf * min(2**n, 8) for n in range(n_layers + 1)]
    layers = [nn.Conv2d(in_ch, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
    for n in range(1, n_layers + 1):
        layers += [nn.Conv2d(widths[n - 1], widths[n], 4, 2 if n < n_layers else 1, 1, bias=b),
                   make_norm(norm, widths[n]), nn.LeakyReLU(0.2, True)]
    layers.append(nn.Conv2d(widths[-1], 1, 4, 1, 1))
    return Seq("model", layers)


def pixel_discriminator(in_ch, ndf, norm):
    b = biased(norm)
    return Seq("net", [nn.Conv2d(in_ch, ndf, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(ndf, 2 * ndf, 1, bias=b),
                       make_norm(norm, 2 * ndf), nn.LeakyReLU(0.2, True), nn.Conv2d(2 * ndf, 1, 1, bias=b)])


def reference_G(in_ch, out_ch, ngf, name, norm, dropout):
    levels = {"unet_256": 8, "unet_128": 7}
    blocks = {"resnet_9blocks": 9, "resnet_6blocks": 6}
    if name in levels:
        return unet(in_ch, out_ch, levels[name], ngf, norm, dropout)
    return resnet(in_ch, out_ch, blocks[name], ngf, norm, dropout)


def reference_D(in_ch, ndf, name, n_layers, norm):
    if name == "pixel":
        return pixel_discriminator(in_ch, ndf, norm)
    return patch_discriminator(in_ch, ndf, 3 if name == "basic" else n_layers, norm)
