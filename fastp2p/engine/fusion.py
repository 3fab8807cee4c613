"""Converters that put the fused-kernels path's Triton modules in place of the reference's layers, keeping
checkpoint keys: (norm, activation[, dropout][, reflection pad]) become one fused norm, the other reflection pads
a layout-keeping pad, and the conv biases that InstanceNorm cancels stop being computed; with --fused_conv, a conv and
the norm after it become a FusedConv and a ConvNorm (see fuse_conv_norms). CONVERTERS names them in the order they
run.

A fused norm takes the norm's index in its nn.Sequential and shares its Parameter and buffer objects; the
activation (and dropout, and pad) it absorbs becomes an nn.Identity, which has no state. Replaced blocks and convs
likewise keep their children or Parameters. So the state_dict keys, the optimizers' parameters and the
checkpoints stay exactly the reference's.

Patterns, as the reference trainer's ResNet generator, U-Net and PatchGAN build them:
- ``norm, ReLU|LeakyReLU[, Dropout]`` in the PatchGAN, the ResNet generator and its blocks;
- a norm that ends a block (ResnetBlock's second norm, the U-Net's ``upnorm``) with an optional
  ``Dropout`` after it: fused with the identity activation;
- the U-Net ``downnorm`` followed by the inner block, whose first layer is ``LeakyReLU``: fused with that
  LeakyReLU, which becomes an Identity. The inner block then sees LeakyReLU(x) both as its input and
  in its skip connection, which is what the reference computes too: its in-place LeakyReLU overwrites
  the tensor that the skip concatenates, and the parent's ReLU follows the concatenation;
- a ``ReflectionPad2d`` right after any of these (the ResnetBlock's second pad, the ResNet output layer's):
  the norm writes its output padded;
- a ``ResnetBlock`` becomes a FusedResnetBlock: its last norm adds the skip, and the norm before it (the
  previous block's last, or the downsampling's) returns its output both plain, for the skip, and padded, for
  the block's first conv;
- a U-Net level below a fused down norm becomes a FusedUnetSkipBlock: that norm opens its skip concatenation,
  with the outer level's ReLU applied, and passes it in; the level's last norm fills and returns it; the ReLU
  becomes an Identity.
Tensors a norm hands to the block after it travel as forward arguments: the container of fused blocks is a
HandOffSequential.
"""

from collections import OrderedDict

import torch.nn.functional as F
from torch import nn

from fastp2p import kernels  # Triton is an optional extra: its modules load on first use (see fastp2p/kernels/__init__.py)
from fastp2p.engine.path import FP32_KERNELS, Check, FastPath, Stage
from fastp2p.networks import ResnetBlock, UnetSkipConnectionBlock

ACTIVATIONS = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu"}


def activation_of(module):
    """(name, negative_slope) of a ReLU/LeakyReLU module, else None."""
    name = ACTIVATIONS.get(type(module))
    if name is None:
        return None
    return name, getattr(module, "negative_slope", 0.0)


def leading_activation(module):
    """The LeakyReLU/ReLU that opens a U-Net inner block (``module.model[0]``), with its container."""
    inner = getattr(module, "model", None)
    if isinstance(inner, nn.Sequential) and len(inner) and activation_of(inner[0]) is not None:
        return inner
    return None


def fuse_sequential(seq, fused_cls):
    count = 0
    for i in range(len(seq)):
        norm = seq[i]
        if type(norm) not in (nn.BatchNorm2d, nn.InstanceNorm2d):
            continue
        activation, slope, dropout = "identity", 0.2, 0.0
        j = i + 1
        if j < len(seq) and activation_of(seq[j]) is not None:
            activation, slope = activation_of(seq[j])
            seq[j] = nn.Identity()
            j += 1
        elif j < len(seq) and leading_activation(seq[j]) is not None:
            inner = leading_activation(seq[j])
            activation, slope = activation_of(inner[0])
            inner[0] = nn.Identity()
        if j < len(seq) and type(seq[j]) is nn.Dropout:
            dropout = seq[j].p
            seq[j] = nn.Identity()
        seq[i] = fused_cls.from_norm(norm, activation=activation, negative_slope=slope, dropout=dropout)
        count += 1
    return count


def fuse_norm_activations(net):
    """Fuse every norm of ``net`` in place; returns how many were fused (0 under --norm none/syncbatch)."""
    return sum(fuse_sequential(module, kernels.FusedNormAct) for module in list(net.modules())
               if isinstance(module, nn.Sequential))


def fuse_pads_into_norms(net):
    """Hand each nn.ReflectionPad2d that directly follows a fused norm in its nn.Sequential (past the Identity
    layers fusion left) to that norm, which then writes its output padded, and make the pad an Identity
    (it has no state); returns how many. In the ResNet generator that is each block's second pad and the
    output layer's pad, half of its pads: each saves a pass over the activation forward and backward."""
    count = 0
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential):
            layers = list(module)
            for i, norm in enumerate(layers):
                j = i + 1
                while j < len(layers) and type(layers[j]) is nn.Identity:
                    j += 1
                if isinstance(norm, kernels.FusedNormAct) and j < len(layers) and type(layers[j]) is nn.ReflectionPad2d:
                    norm.padding = tuple(layers[j].padding)
                    module[j] = nn.Identity()
                    count += 1
    return count


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


def fuse_reflection_pads(net):
    """Replace every remaining nn.ReflectionPad2d by one that keeps channels-last; returns how many."""
    count = 0
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential):
            for i, layer in enumerate(module):
                if type(layer) is nn.ReflectionPad2d:
                    module[i] = kernels.FusedReflectionPad2d.from_module(layer)
                    count += 1
    return count


class Conv2dBeforeInstanceNorm(nn.Conv2d):
    """A Conv2d whose bias the InstanceNorm after it cancels (each (n, c) plane loses its mean, bias included).

    The output is computed without the bias, so no bias-add kernel runs forward and no bias-gradient reduction
    backward (one of each per conv, on tensors of the conv's output size). The bias's true gradient is zero;
    the reference's is rounding noise that Adam turns into a walk of up to lr per step, without effect on any
    output. Here the bias is frozen instead (see drop_cancelled_conv_biases): it keeps its value and its key.
    """

    def forward(self, x):
        return self._conv_forward(x, self.weight, None)


class ConvTranspose2dBeforeInstanceNorm(nn.ConvTranspose2d):
    """ConvTranspose2d counterpart of Conv2dBeforeInstanceNorm."""

    def forward(self, x, output_size=None):
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return F.conv_transpose2d(x, self.weight, None, self.stride, self.padding, output_padding, self.groups,
                                  self.dilation)


BIAS_CANCELLING_CONVS = {nn.Conv2d: Conv2dBeforeInstanceNorm, nn.ConvTranspose2d: ConvTranspose2dBeforeInstanceNorm}


def without_bias_compute(conv):
    """conv's ...BeforeInstanceNorm counterpart: a new module sharing conv's Parameter objects (so the same keys and
    values). Built on the meta device, so no weights are drawn and the seeded random stream is untouched."""
    cls = BIAS_CANCELLING_CONVS[type(conv)]
    options = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                   padding_mode=conv.padding_mode, device="meta")
    if isinstance(conv, nn.ConvTranspose2d):
        options["output_padding"] = conv.output_padding
    bias_free = cls(conv.in_channels, conv.out_channels, conv.kernel_size, **options)
    bias_free.weight, bias_free.bias = conv.weight, conv.bias
    bias_free.train(conv.training)
    return bias_free


def drop_cancelled_conv_biases(net):
    """Replace each biased conv followed by an InstanceNorm2d by its ...BeforeInstanceNorm counterpart (the same
    parameters and keys) and freeze its bias; returns how many.

    Frozen (requires_grad False) rather than given zero gradients: no kernel fills or accumulates them, the
    optimizers skip them, and DDP, wrapped after this, leaves them out of its buckets instead of waiting for a
    gradient. A discriminator's biases are switched back on by set_requires_grad in each D step; being outside
    the graph, they still get no gradient.
    """
    count = 0
    for module in list(net.modules()):
        if isinstance(module, nn.Sequential):
            for i, (conv, norm) in enumerate(zip(module, list(module)[1:])):
                cancels = type(norm) is nn.InstanceNorm2d and not norm.track_running_stats  # (running stats would not)
                if type(conv) in BIAS_CANCELLING_CONVS and conv.bias is not None and cancels:
                    module[i] = without_bias_compute(conv)
                    conv.bias.requires_grad_(False)
                    count += 1
    return count


NORMS = (nn.BatchNorm2d, nn.InstanceNorm2d)


def _fusable_conv(layer):
    """Whether FusedConv computes ``layer`` (a conv, or a bias-free one of drop_cancelled_conv_biases)."""
    return (isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and layer.groups == 1 and layer.dilation == (1, 1)
            and layer.padding_mode == "zeros" and len(set(layer.stride)) == 1 and len(set(layer.padding)) == 1)


def _reflect_pad(pad, conv):
    """The one reflection padding of ``pad`` that a FusedConv ``conv`` after it can take over, else 0."""
    if (type(pad) is not nn.ReflectionPad2d or len(set(pad.padding)) != 1 or not _fusable_conv(conv)
            or isinstance(conv, nn.ConvTranspose2d) or conv.padding != (0, 0)):
        return 0
    return pad.padding[0]


def fuse_conv_norms(net):
    """Replace each conv followed by a norm (and a ReLU/LeakyReLU, which becomes an Identity) by a FusedConv, which
    also computes its output's statistics, and the norm by the ConvNorm they are for; a ReflectionPad2d right
    before such a conv becomes its reflected indices (an Identity). A ConvNorm whose next layer is a conv has that
    conv, norm or not, made a FusedConv that normalizes and activates its input as it loads it: the ConvNorm hands
    it the pre-norm output and its statistics, and the activation is never written. Returns how many convs.

    Covers every conv + norm of the ResNet generator (its blocks' second conv and the downsampling, upsampling and
    output convs take their input's norm on load), the PatchGAN (each conv after its first) and the U-Net (its down
    and up convs with their norms; its levels' skips need each normalized activation written).
    """
    count = 0
    for seq in list(net.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        feeding, i = None, 0  # feeding: the ConvNorm whose output reaches layer i
        while i < len(seq):
            pad = _reflect_pad(seq[i], seq[i + 1]) if i + 1 < len(seq) else 0
            c = i + 1 if pad else i
            conv = seq[c]
            norm = seq[c + 1] if c + 1 < len(seq) and type(seq[c + 1]) in NORMS else None
            if not _fusable_conv(conv) or (norm is None and feeding is None):
                feeding = feeding if type(seq[i]) is nn.Identity else None
                i += 1
                continue
            if pad:
                seq[i] = nn.Identity()
            activation = activation_of(seq[c + 2]) if norm is not None and c + 2 < len(seq) else None
            conv_norm = kernels.ConvNorm(norm, *(activation or ())) if norm is not None else None
            seq[c] = kernels.FusedConv(conv, reflect_pad=pad, norm=conv_norm,
                                       add_bias=type(conv) not in BIAS_CANCELLING_CONVS.values())
            if feeding is not None:
                feeding.hands_off = True
            feeding, i = None, c + 1
            if norm is not None:
                seq[c + 1] = feeding = conv_norm
                if activation is not None:
                    seq[c + 2] = nn.Identity()
                i = c + 2
            count += 1
    return count


# The converters, in the order they must run: the conv biases are found by the InstanceNorm2d after them, so before
# the convs and norms are fused; the pads, residuals and skips are handed to fused norms; the remaining pads are
# replaced last, after those the norms and convs took; then the containers pass the hand-offs on. --fused_kernels
# runs all but fuse_conv_norms, --fused_conv CONV_CONVERTERS, both all of them.
CONVERTERS = (drop_cancelled_conv_biases, fuse_conv_norms, fuse_norm_activations, fuse_pads_into_norms,
              fuse_resnet_blocks, fuse_unet_skips, fuse_reflection_pads, pass_hand_offs)
CONV_CONVERTERS = (drop_cancelled_conv_biases, fuse_conv_norms, pass_hand_offs)


def fuse_network(net, fused_kernels=True, fused_conv=False):
    """Apply the CONVERTERS that the switches ask for to ``net`` in place, in order; returns how many modules they
    replaced or changed."""
    wanted = set(CONV_CONVERTERS if fused_conv else ())
    wanted |= set(CONVERTERS) - {fuse_conv_norms} if fused_kernels else set()
    return sum(convert(net) for convert in CONVERTERS if convert in wanted)


def fuse_layers(prep):
    """The LAYERS hook of both paths: one pass of the converters, which --fused_kernels and --fused_conv share."""
    for net in prep.networks:
        fuse_network(net, fused_kernels=prep.config.fused_kernels, fused_conv=prep.config.fused_conv)


def fused_losses(choices, config):
    """The models' GAN and L1 criteria as the fused kernels (same call signatures)."""
    choices.update(gan_loss=lambda mode: kernels.FusedGANLoss(mode), l1_loss=kernels.FusedL1Loss)


def triton_blockers(s):
    """Why Triton's kernels cannot run here, if they cannot."""
    return [reason for reason, blocked in (
        ("it needs Triton: pip install 'fastp2p[triton]'", not s.triton),
        ("on the CPU it runs in Triton's interpreter (slow, for tests): set TRITON_INTERPRET=1 before starting",
         not s.cuda and not s.interpreter),
    ) if blocked]


def fused_layer_blockers(s, on):
    """Triton's, and --compile's: it traces the networks itself and would break its graphs at every fused layer."""
    if not on:
        return []
    compiled = ["--compile traces the networks itself, breaking its graphs at every fused layer (and fuses the "
                "norms itself); the pair has no parity test"] if s.value("compile") is not None else []
    return triton_blockers(s) + compiled


FUSED_KERNELS = FastPath(
    "fused_kernels", "Triton fused norm + activation and fused GAN/L1 losses", auto=lambda s: s.cuda,
    blockers=fused_layer_blockers, hooks={Stage.LAYERS: fuse_layers},
    runtime=fused_losses, bench_row="fused_kernels", check=Check(FP32_KERNELS))
FUSED_CONV = FastPath(
    "fused_conv", "Triton implicit-GEMM convs that write their norm's statistics and apply the norm + activation "
                  "before them as they load their input (ResNet, PatchGAN, U-Net convs with a norm); auto stays off "
                  "until a GPU measurement shows a layer beating cuDNN + the fused norm",
    auto=lambda s: False, blockers=fused_layer_blockers, hooks={Stage.LAYERS: fuse_layers}, check=Check(FP32_KERNELS))
