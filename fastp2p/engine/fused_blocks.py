"""The fused blocks of --fused_kernels: blocks whose norms write the ResNet skips and pads and the U-Net skip
concatenations, and the containers that pass those hand-offs from one layer to the next (the same children, so the
same state_dict keys). See fusion.py for the converters' order."""

from collections import OrderedDict

from torch import nn

from fastp2p import kernels  # Triton is an optional extra: its modules load on first use (fastp2p/kernels/__init__.py)
from fastp2p.networks import ResnetBlock, UnetSkipConnectionBlock


def run_layers(layers, x):
    """Run ``layers`` in order, skipping the Identity layers fusion left. A layer that returns a pair (output,
    hand-off: a fused norm's padded output or the U-Net skip concatenation it opened) passes the hand-off to the
    next layer as its second forward argument."""
    hand_off = ()
    for layer in layers:
        if type(layer) is nn.Identity:
            continue
        out = layer(x, *hand_off)
        x, *hand_off = out if isinstance(out, tuple) else (out,)
    if hand_off:
        raise RuntimeError(f"the last layer of {len(layers)} returned a hand-off that no layer takes")
    return x


class HandOffSequential(nn.Sequential):
    """nn.Sequential (the same children, so the same state_dict keys) whose layers pass hand-offs on: see
    run_layers. It holds the fused blocks, which take what the norm before them wrote."""

    def forward(self, x):
        return run_layers(self, x)


class FusedResnetBlock(nn.Module):
    """A ResnetBlock (the same ``conv_block``, so the same keys) whose last norm adds the skip as it writes its
    output: ``x + conv_block(x)`` without an add kernel forward, and x's gradient without a sum of the two paths'
    backward (the norm writes it whole). ``x_padded``, x already padded by ``conv_block[0]`` (written by the norm
    before the block, besides x), replaces that pad."""

    def __init__(self, block):
        super().__init__()
        self.conv_block = block.conv_block
        self.train(block.training)

    def forward(self, x, x_padded=None):
        *body, last_norm = [layer for layer in self.conv_block if type(layer) is not nn.Identity]
        h = run_layers(body, x) if x_padded is None else run_layers(body[1:], x_padded)
        return last_norm(h, residual=x)


def fuse_resnet_blocks(net):
    """Replace each ResnetBlock that ends with a fused norm by a FusedResnetBlock, and have the fused norm whose
    output enters a block with a reflection pad (the previous block's last norm, or the downsampling's) also write
    that output padded (keep_unpadded): it returns both, the block takes the padded one instead of its pad, and
    the skip the plain one. Returns how many blocks; with the norms' own pads this leaves the ResNet generator one
    pad kernel, on the input image."""
    count = 0
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential):
            feeding = None  # the fused norm whose output the next layer receives
            for i, layer in enumerate(module):
                if type(layer) is ResnetBlock and isinstance(layer.conv_block[-1], kernels.FusedNormAct):
                    module[i] = FusedResnetBlock(layer)
                    pad = layer.conv_block[0]
                    if feeding is not None and feeding.padding is None and type(pad) is nn.ReflectionPad2d:
                        feeding.padding, feeding.keep_unpadded = tuple(pad.padding), True
                    feeding = layer.conv_block[-1]
                    count += 1
                elif type(layer) is not nn.Identity:
                    feeding = layer if isinstance(layer, kernels.FusedNormAct) else None
    return count


class FusedUnetSkipBlock(nn.Module):
    """A U-Net level (the same ``model``, so the same keys) whose skip concatenation, and the ReLU its outer level
    applies to it, are written by norms: the outer level's down norm opens it with relu(x) and passes it in as
    ``skip``, this level's last norm writes relu(its output) into the rest of it, and that tensor is the level's
    output. No cat or ReLU kernel forward, no ReLU backward, and x's gradient is not summed from two paths."""

    def __init__(self, level):
        super().__init__()
        self.outermost, self.model = level.outermost, level.model
        self.train(level.training)

    def forward(self, x, skip):
        *body, last_norm = [layer for layer in self.model if type(layer) is not nn.Identity]
        return last_norm(run_layers(body, x), skip=skip)


def fuse_unet_skips(net):
    """Replace each U-Net level whose outer level has a fused down norm by a FusedUnetSkipBlock: that norm opens
    the skip concatenation, the level's last (fused) norm closes it, and the outer level's ReLU after it becomes
    an Identity. Returns how many levels (all but the outermost and the one below it, whose input no norm
    writes). A replaced level shares its ``model`` with its replacement, so walking the levels as they were built
    reaches every one."""
    count = 0
    for outer in list(net.modules()):
        if type(outer) is not UnetSkipConnectionBlock or outer.outermost:
            continue
        layers = outer.model  # LeakyReLU, downconv, downnorm, inner level, ReLU, upconv, upnorm[, Dropout]
        down_norm, inner, relu = layers[2], layers[3], layers[4]
        if not (isinstance(down_norm, kernels.FusedNormAct) and type(inner) is UnetSkipConnectionBlock
                and type(relu) is nn.ReLU):
            continue
        inner_norm = [layer for layer in inner.model if type(layer) is not nn.Identity][-1]
        if (not isinstance(inner_norm, kernels.FusedNormAct) or inner_norm.padding is not None
                or down_norm.padding is not None):
            continue
        down_norm.skip_width = inner_norm.num_features
        inner_norm.closes_skip = True
        layers[3], layers[4] = FusedUnetSkipBlock(inner), nn.Identity()
        count += 1
    return count


def pass_hand_offs(net):
    """Make each nn.Sequential that holds a fused block a HandOffSequential (the same children), so the norm before
    the block hands it its padded input or its skip; returns how many."""
    count = 0
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Sequential and any(isinstance(layer, hand_off_takers()) for layer in child):
                setattr(parent, name, HandOffSequential(OrderedDict(child.named_children())))
                count += 1
    return count


FUSED_BLOCKS = (FusedResnetBlock, FusedUnetSkipBlock)


def hand_off_takers():
    """The layers that take a hand-off from the layer before them (the fused blocks, and the FusedConvs, whose
    ConvNorm takes their statistics); kernels' modules load on first use."""
    return FUSED_BLOCKS + (kernels.FusedConv,)
