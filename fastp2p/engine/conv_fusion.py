"""The conv converters: the conv biases an InstanceNorm cancels stop being computed (--fused_kernels, --fused_conv),
and with --fused_conv a conv and the norm after it become a FusedConv and a ConvNorm (see fuse_conv_norms)."""

import torch.nn.functional as F
from torch import nn

from fastp2p import kernels  # Triton is an optional extra: its modules load on first use (fastp2p/kernels/__init__.py)
from fastp2p.engine.layers import activation_of, rebuilt_as


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
    """conv's ...BeforeInstanceNorm counterpart: a new module sharing conv's Parameter objects."""
    return rebuilt_as(conv, BIAS_CANCELLING_CONVS[type(conv)])


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
