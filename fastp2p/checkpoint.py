"""Checkpoint files: the reference trainer's network files, and fastp2p's full training state.

Network files are plain state_dicts named ``{epoch}_net_{name}.pth`` exactly as the reference writes
them, so a checkpoint moves both ways between fastp2p and the reference trainer.

Files that belong together (a prefix's networks and its training state, and the epoch snapshot taken at the
same moment) are written as one set (``CheckpointSet``): each file goes to a temporary name and is
fsynced, then a small journal naming every file is committed with an atomic rename, then the files are
renamed into place and the journal removed. A kill before the journal's rename leaves the old set (the
temporary files are removed at the next start, ``recover_folder``); a kill after it is rolled forward at
the next start. Either way no folder ever mixes files of two saves. The training state records a SHA-256
of each network file of its set, so a resume can also tell a set whose files were replaced by hand or by
another program.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import time
import uuid
from collections import OrderedDict

import torch
from torch import nn

from fastp2p.errors import CheckpointError

TEMP_PREFIX = ".tmp_"
JOURNAL_PREFIX = ".commit_"


def network_filename(epoch, name):
    """``latest_net_G.pth``, ``5_net_D_A.pth``, ``iter_400_net_G.pth``."""
    return f"{epoch}_net_{name}.pth"


def training_state_filename(prefix):
    """``latest_train_state.pth``: what fastp2p keeps beside the networks to resume exactly."""
    return f"{prefix}_train_state.pth"


def load_prefix(opt):
    """The checkpoint prefix that --epoch/--load_iter select: ``iter_<n>`` when --load_iter > 0."""
    return f"iter_{opt.load_iter}" if opt.load_iter > 0 else opt.epoch


def fsync_folder(folder):
    """Make renames and removals in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_digest(path):
    """SHA-256 of a file's bytes, the identity a training state records for each network file of its set."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class _HashingWriter:
    """A file that hashes what torch.save writes through it, so no file is read back to be hashed."""

    def __init__(self, f):
        self.f, self.digest = f, hashlib.sha256()

    def write(self, data):
        self.digest.update(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def is_write_failure(error):
    """An OSError, or torch.save's RuntimeError for a write that failed (how a full disk shows up there)."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and "file write failed" in str(error))


def write_error(folder, what, error):
    """One line for a write that failed (full disk, read-only folder), stating that nothing older was touched."""
    if isinstance(error, OSError):
        reason = os.strerror(error.errno) if error.errno else str(error)
    else:
        reason = "a write failed (is the disk full?)"
    return CheckpointError(f"cannot write {what} into {folder}: {reason}; the checkpoints already there are kept")


# The only names a checkpoint folder's saves write: a prefix's network files and training state. A journal is
# read from the folder, which may come from elsewhere, so a name outside these kinds (a path, ``..``) is refused.
SET_FILE_NAME = re.compile(r"(latest|\d+|iter_\d+)_(net_[A-Za-z0-9_]+\.pth|train_state\.pth)")
JOURNAL_NAME = re.compile(re.escape(JOURNAL_PREFIX) + r"([0-9a-f]{12})\.json")


def check_set_file_name(name):
    """Refuse a name that a checkpoint set may not hold (anything but a plain network or training-state name)."""
    if not isinstance(name, str) or not SET_FILE_NAME.fullmatch(name):
        raise CheckpointError(f"a checkpoint set holds only network and training-state files, not {name!r}")


class CheckpointSet:
    """Files written as one unit: after a crash at any instant, a folder holds the whole old set or the whole
    new one. Use as a context manager: ``save`` and ``link`` stage files, leaving the block commits them, an
    exception discards them."""

    def __init__(self, folder, what="checkpoint"):
        self.folder, self.what = folder, what
        self.token = uuid.uuid4().hex[:12]
        self.staged = OrderedDict()  # final name -> temporary name
        self.digests = {}

    def _temp(self, name):
        return f"{TEMP_PREFIX}{self.token}_{name}"

    def _stage(self, name):
        """The temporary name of ``name``, recorded for the journal; names recover_folder would refuse are never
        staged."""
        check_set_file_name(name)
        self.staged[name] = self._temp(name)
        return self.staged[name]

    def save(self, name, obj):
        """Stage ``obj`` as ``name`` (torch.save, fsynced); returns the file's SHA-256."""
        temp = self._stage(name)  # staged first: a failed write is discarded too
        with open(os.path.join(self.folder, temp), "wb") as f:
            writer = _HashingWriter(f)
            torch.save(obj, writer)
            f.flush()
            os.fsync(f.fileno())
        self.digests[name] = writer.digest.hexdigest()
        return self.digests[name]

    def link(self, name, same_as):
        """Stage ``name`` with the bytes of the staged ``same_as``: a hard link, or a copy where links fail."""
        source, temp = os.path.join(self.folder, self.staged[same_as]), self._stage(name)
        try:
            os.link(source, os.path.join(self.folder, temp))
        except OSError:
            shutil.copyfile(source, os.path.join(self.folder, temp))
            with open(os.path.join(self.folder, temp), "rb+") as f:
                os.fsync(f.fileno())
        self.digests[name] = self.digests[same_as]

    def __enter__(self):
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as error:
            raise write_error(self.folder, self.what, error) from None
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            try:
                self._commit()
                return False
            except Exception as failure:
                error = failure
                if not is_write_failure(error):
                    raise
        self._discard()
        if is_write_failure(error):
            raise write_error(self.folder, self.what, error) from None
        return False

    def _commit(self):
        journal = os.path.join(self.folder, f"{JOURNAL_PREFIX}{self.token}.json")
        temp_journal = os.path.join(self.folder, self._temp("journal.json"))
        with open(temp_journal, "w") as f:
            json.dump({"files": self.staged}, f)
            f.flush()
            os.fsync(f.fileno())
        fsync_folder(self.folder)  # the staged files' names are durable before the journal points at them
        os.replace(temp_journal, journal)  # the commit point
        fsync_folder(self.folder)
        self.staged, staged = OrderedDict(), self.staged  # from here on, a failure rolls forward at next start
        roll_forward(self.folder, journal, staged)

    def _discard(self):
        for temp in self.staged.values():
            try:
                os.remove(os.path.join(self.folder, temp))
            except OSError:
                pass
        self.staged = OrderedDict()


def is_regular_file(path):
    """True for a plain file (not a link, folder, FIFO or device), without following a link."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def read_journal(folder, entry):
    """The {final name: temporary name} map of a committed save's journal, each name checked before any is used.

    A journal names only this folder's own kinds of files (SET_FILE_NAME), each under the temporary name its save
    gave it, and every file it names is a plain file here (a temporary one still to be renamed, or the final one
    already renamed): anything else is a crafted or damaged journal, refused whole with one line."""
    path = os.path.join(folder, entry)
    token = JOURNAL_NAME.fullmatch(entry).group(1)
    advice = (f"remove it (and the {TEMP_PREFIX}{token}_* files beside it) to drop that save, or pick another "
              f"--name")
    try:
        with open(path, "rb") as f:
            staged = json.loads(f.read(1 << 20).decode())["files"]
        if not isinstance(staged, dict) or not staged:
            raise ValueError("no files listed")
        for name, temp in staged.items():
            check_set_file_name(name)
            if temp != f"{TEMP_PREFIX}{token}_{name}":
                raise ValueError(f"{name!r} is staged under {temp!r}, not its save's temporary name")
            if not (is_regular_file(os.path.join(folder, temp)) or is_regular_file(os.path.join(folder, name))):
                raise ValueError(f"neither {temp} nor {name} is a plain file in the folder")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CheckpointError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"refusing the save journal {path}: {reason}; {advice}") from None
    return staged


def roll_forward(folder, journal, staged):
    """Rename a committed set's files into place (those still under temporary names), then drop its journal."""
    for name, temp in staged.items():
        if os.path.exists(os.path.join(folder, temp)):
            os.replace(os.path.join(folder, temp), os.path.join(folder, name))
    fsync_folder(folder)
    os.remove(journal)
    fsync_folder(folder)


def recover_folder(folder):
    """Finish the saves a dead run had committed and remove the temporary files of those it had not.

    Every journal is checked before anything is renamed or removed (``read_journal``), so a folder with one
    crafted or damaged journal is left exactly as it was. Returns a line saying what was done, or None. Call it
    only while holding the folder's run lock: the temporary files of a live run's save look the same."""
    if not os.path.isdir(folder):
        return None
    journals = [(entry, read_journal(folder, entry)) for entry in sorted(os.listdir(folder))
                if JOURNAL_NAME.fullmatch(entry)]
    for entry, staged in journals:
        roll_forward(folder, os.path.join(folder, entry), staged)
    stale = [entry for entry in os.listdir(folder)
             if entry.startswith(TEMP_PREFIX) and not os.path.isdir(os.path.join(folder, entry))]
    size = sum(os.lstat(os.path.join(folder, entry)).st_size for entry in stale)
    for entry in stale:
        os.remove(os.path.join(folder, entry))  # a link planted under such a name goes, not what it points at
    if stale:
        fsync_folder(folder)
    done = []
    if journals:
        done.append(f"finished {len(journals)} checkpoint save(s) that an interrupted run had committed")
    if stale:
        done.append(f"removed {len(stale)} temporary file(s) ({size / 2**20:.1f} MiB) of an interrupted save")
    return "; ".join(done) or None


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


def read_checkpoint(path, map_location="cpu"):
    """torch.load with weights_only=True, turning every failure into a one-line CheckpointError naming the file.

    A file that holds arbitrary Python objects is refused: loading it would run code it carries."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # unpickling errors come in many types; the file is what matters
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"refusing to load {path}: it holds Python objects beyond tensors and plain "
                                  f"containers, which would run code when loaded") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None


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
        lines = [f"{path} does not match the network built from the given flags:"]
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape", wrong_shape)):
            if items:
                shown = ", ".join(items[:5]) + (f" ... ({len(items)} in all)" if len(items) > 5 else "")
                lines.append(f"  {label}: {shown}")
        lines.append("  check --netG/--netD, --norm, --ngf/--ndf, --input_nc/--output_nc, --n_layers_D and --no_dropout")
        raise CheckpointError("\n".join(lines))
    target.load_state_dict(state, strict=True)
    return net


LOCK_NAME = ".fastp2p_run.lock"


class FolderLock:
    """One training run per checkpoint folder: an exclusive ``flock`` on a file in it, which the kernel releases
    when the holder dies (so the lock of a killed run is simply taken over), holding the holder's pid, host and
    start time for the message a second run gets."""

    def __init__(self, folder):
        self.folder = folder
        self.fd = None

    def acquire(self):
        try:
            os.makedirs(self.folder, exist_ok=True)
            fd = os.open(os.path.join(self.folder, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise write_error(self.folder, "the run lock", error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CheckpointError(f"another run is training into {self.folder} ({holder}); stop it first, or "
                                  f"pick another --name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays, as removing it would race a new holder
            self.fd = None
