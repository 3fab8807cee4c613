"""Checkpoint files: the reference trainer's network files, read and written in its key layout.

Network files are plain state_dicts named ``{epoch}_net_{name}.pth`` exactly as the reference writes them, so a
checkpoint moves both ways between fastp2p and the reference trainer. A file is read with ``weights_only``: one
that would run code when loaded is refused. How the files of one save are written together is checkpoint_sets.py;
the one-run-per-folder lock is run_lock.py.
"""

import hashlib
import os
import pickle
import zipfile
from collections import OrderedDict

import torch
from torch import nn

from fastp2p.architecture import differing_flags
from fastp2p.errors import CheckpointError, first_line


def network_filename(epoch, name):
    """``latest_net_G.pth``, ``5_net_D_A.pth``, ``iter_400_net_G.pth``."""
    return f"{epoch}_net_{name}.pth"


def training_state_filename(prefix):
    """``latest_train_state.pth``: what fastp2p keeps beside the networks to resume exactly."""
    return f"{prefix}_train_state.pth"


def load_prefix(opt):
    """The checkpoint prefix that --epoch/--load_iter select: ``iter_<n>`` when --load_iter > 0."""
    return f"iter_{opt.load_iter}" if opt.load_iter > 0 else opt.epoch


def file_digest(path):
    """SHA-256 of a file's bytes, the identity a training state records for each network file of its set."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def unwrap(net):
    """The plain module behind DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(net, nn.parallel.DistributedDataParallel):
            net = net.module
        elif hasattr(net, "_orig_mod"):
            net = net._orig_mod
        else:
            return net


def network_state_dict(net):
    """The reference's state_dict of ``net``: no ``module.``/``_orig_mod.`` prefixes, tensors on CPU."""
    state = unwrap(net).state_dict()
    return OrderedDict((k, v.detach().cpu()) for k, v in state.items())


def patch_instance_norm_state_dict(net, state_dict):
    """Drop InstanceNorm running stats that old checkpoints carry and current nets do not track.

    The reference does the same on load, which lets pre-0.4 pretrained CycleGAN models load strictly.
    """
    modules = dict(unwrap(net).named_modules())
    for key in list(state_dict.keys()):
        owner_name, _, attr = key.rpartition(".")
        owner = modules.get(owner_name)
        if owner is None or not type(owner).__name__.startswith("InstanceNorm"):
            continue
        if attr in ("running_mean", "running_var") and getattr(owner, attr, None) is None:
            state_dict.pop(key)
        elif attr == "num_batches_tracked":
            state_dict.pop(key)
    return state_dict


LEGACY_HEADER = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)
"""How a file of torch.save's legacy (non-zip) format begins"""
ASKS_FOR_CODE = ("GLOBAL", "add_safe_globals", "call reduce")
"""What torch's weights-only unpickler says when a file's pickle asks for a Python object beyond tensors"""


def is_torch_file(path):
    """Whether ``path`` is in one of torch.save's formats (a zip archive, or the legacy header), whatever it holds."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(len(LEGACY_HEADER)) == LEGACY_HEADER


def read_checkpoint(path, map_location="cpu"):
    """torch.load with weights_only=True, turning every failure into a one-line CheckpointError naming the file.

    A torch file whose pickle asks for other Python objects is refused: loading it would run code it carries. An
    empty, truncated or random file is called what it is, corrupt, and never a would-be attack."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors come in many types; the file is what matters
        if os.path.getsize(path) == 0:
            raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes); copy it again, or "
                                  f"use another --epoch") from None
        if any(word in str(e) for word in ASKS_FOR_CODE) and is_torch_file(path):
            raise CheckpointError(f"refusing to load {path}: it holds Python objects beyond tensors and plain "
                                  f"containers, which would run code when loaded") from None
        raise CheckpointError(f"cannot read checkpoint {path}: it is truncated or corrupt ({type(e).__name__}: "
                              f"{load_failure(e)}); copy it again, or use another --epoch") from None


def load_failure(error):
    """The first sentence of what torch.load says, past the weights-only unpickler's preamble."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    marker = next((i for i, line in enumerate(lines) if line.endswith("WeightsUnpickler error:")), None)
    if marker is not None and marker + 1 < len(lines):
        return lines[marker + 1]
    return first_line(error).split(". ")[0]


def load_network(net, path, map_location="cpu"):
    """Load a reference-format network file into ``net`` strictly, with a clear error on mismatch.

    A checkpoint of another architecture or norm (missing or unexpected keys, other shapes) is reported
    with the first differences and the flags that usually cause them, instead of torch's long traceback.
    """
    state = read_checkpoint(path, map_location)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a network state_dict")
    state = OrderedDict(state)
    state.pop("_metadata", None)
    saved = OrderedDict(state)  # as the file has it, before the instance-norm patch below
    target = unwrap(net)
    patch_instance_norm_state_dict(target, state)
    expected = target.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k}: file {tuple(state[k].shape)} vs net {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        named = differing_flags(saved, expected)
        if named:
            raise CheckpointError(f"{path} does not match the network built from the given flags: {named}")
        lines = [f"{path} does not match the network built from the given flags:"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape", wrong_shape)):
            if items:
                shown = ", ".join(items[:5]) + (f" ... ({len(items)} in all)" if len(items) > 5 else "")
                lines.append(f"  {label}: {shown}")
        lines.append("  check --netG/--netD, --norm, --ngf/--ndf, --input_nc/--output_nc, --n_layers_D and "
                     "--no_dropout")
        raise CheckpointError("\n".join(lines))
    target.load_state_dict(state, strict=True)
    return net
