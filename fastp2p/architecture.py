"""Which flags built a network, read from its state_dict alone: what a checkpoint that does not load says instead
of a list of keys.

The reference's networks are built from a few flags (a generator from --netG, --ngf, --norm, --no_dropout and its
channels; a discriminator from --netD, --ndf, --n_layers_D, --norm and its channels), and each combination gives a
state_dict of its own keys and shapes. The widths and channels are read off the first and last conv weights; every
combination of the rest is built on the meta device (no memory, no initialization) and compared. The flags that tell
the file's network from the one the run built are the answer. Layouts that no combination gives (a network of
one's own) have no answer, and the caller falls back to listing the keys.
"""

import itertools

import torch

from fastp2p.networks import DISCRIMINATORS, GENERATORS, NORM_TYPES, define_D, define_G

NORMS = tuple(norm for norm in NORM_TYPES if norm != "syncbatch")  # syncbatch keeps batch's keys
N_LAYERS = (1, 2, 4, 5, 6)  # --netD n_layers at 3 layers is 'basic', key for key


def layout(state):
    return {key: tuple(value.shape) for key, value in state.items() if hasattr(value, "shape")}


def conv_weights(state):
    return [value.shape for key, value in state.items() if key.endswith("weight") and getattr(value, "ndim", 0) == 4]


def candidates(state):
    """(flags, builder) for every generator and discriminator whose widths and channels fit the conv weights."""
    weights = conv_weights(state)
    if not weights:
        return
    (width, channels), last = weights[0][:2], weights[-1]
    for out_channels in dict.fromkeys((last[0], last[1])):
        for netG, norm, dropout in itertools.product(GENERATORS, NORMS, (False, True)):
            flags = dict(netG=netG, ngf=width, norm=norm, no_dropout=not dropout, input_nc=channels,
                         output_nc=out_channels)
            yield flags, lambda f=flags: define_G(f["input_nc"], f["output_nc"], f["ngf"], f["netG"], f["norm"],
                                                  not f["no_dropout"])
    for netD, layers, norm in itertools.product(DISCRIMINATORS, N_LAYERS + (3,), NORMS):
        if (netD == "n_layers") == (layers == 3):
            continue
        flags = dict(netD=netD, ndf=width, norm=norm, input_channels=channels,
                     **({"n_layers_D": layers} if netD == "n_layers" else {}))
        yield flags, lambda f=flags: define_D(f["input_channels"], f["ndf"], f["netD"], f.get("n_layers_D", 3),
                                              f["norm"])


def builds(state):
    """Every flag combination whose network has exactly the keys and shapes of ``state``."""
    wanted = layout(state)
    found = []
    with torch.device("meta"):
        for flags, build in candidates(state):
            if layout(build().state_dict()) == wanted:
                found.append(flags)
    return found


def as_flags(flags, keys, giving=False):
    """The flags ``keys`` of ``flags`` as they are typed (``giving``: as the fix to type)."""
    words = []
    for key in keys:
        value = flags.get(key)
        if key == "no_dropout":
            words.append("--no_dropout" if value else "no --no_dropout" if giving else "dropout")
        elif key == "input_channels":
            words.append(f"{value} input channels (--input_nc; with --output_nc for pix2pix's D)")
        elif value is not None:
            words.append(f"--{key} {value}")
    return (", " if giving else " ").join(words)


def differing_flags(saved, built):
    """'it was saved from ...' naming the flags that tell the state_dict ``saved`` from the network's ``built``
    (the fewest that do), or None when no combination of the reference's flags gives one of them."""
    pairs = [(s, b) for s in builds(saved) for b in builds(built) if ("netG" in s) == ("netG" in b)]
    if not pairs:
        return None
    def differences(pair):
        return [key for key in dict.fromkeys([*pair[0], *pair[1]]) if pair[0].get(key) != pair[1].get(key)]
    file_flags, net_flags = min(pairs, key=lambda pair: len(differences(pair)))
    keys = differences((file_flags, net_flags))
    if not keys:
        return None
    kind = "generator" if "netG" in file_flags else "discriminator"
    return f"it was saved from a {kind} of {as_flags(file_flags, keys)}, the flags build one of " \
           f"{as_flags(net_flags, keys)}: give {as_flags(file_flags, keys, giving=True)}"
