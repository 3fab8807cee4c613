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
HandOffSequential. The blocks and hand-offs are in fused_blocks.py, the conv converters in conv_fusion.py.
"""

from torch import nn

from fastp2p import kernels  # Triton is an optional extra: its modules load on first use (fastp2p/kernels/__init__.py)
from fastp2p.engine.conv_fusion import drop_cancelled_conv_biases, fuse_conv_norms
from fastp2p.engine.fused_blocks import fuse_resnet_blocks, fuse_unet_skips, pass_hand_offs
from fastp2p.engine.layers import activation_of, leading_activation
from fastp2p.engine.path import FP32_KERNELS, Check, FastPath, Stage


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
