"""Checkpoint sets: the files of one save (a prefix's networks and its training state, and the epoch snapshot taken
at the same moment) written as one unit.

Each file goes to a temporary name and is fsynced, then a small journal naming every file is committed with an
atomic rename, then the files are renamed into place and the journal removed. A kill before the journal's rename
leaves the old set (the temporary files are removed at the next start, ``recover_folder``); a kill after it is
rolled forward at the next start. Either way no folder ever mixes files of two saves. The training state records a
SHA-256 of each network file of its set, so a resume can also tell a set whose files were replaced by hand or by
another program. A folder may come from elsewhere: its journals are checked before anything is done with them.
"""

import hashlib
import json
import os
import re
import shutil
import stat
import uuid
from collections import OrderedDict

import torch

from fastp2p.errors import CheckpointError, first_line
from fastp2p.output_files import open_output

TEMP_PREFIX = ".tmp_"
JOURNAL_PREFIX = ".commit_"


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


class _HashingWriter:
    """A file that hashes what torch.save writes through it, so no file is read back to be hashed.

    It keeps what interrupted a write (a full disk's OSError, the KeyboardInterrupt of a second Ctrl-C): torch.save
    swallows an exception raised in a write past its first and fails later with its own RuntimeError ("unexpected
    pos"), which would hide the cause."""

    def __init__(self, f):
        self.f, self.digest = f, hashlib.sha256()
        self.failure = None

    def write(self, data):
        self.digest.update(data)
        try:
            return self.f.write(data)
        except BaseException as failure:
            self.failure = failure
            raise

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
        with open_output(os.path.join(self.folder, temp), "wb") as f:
            writer = _HashingWriter(f)
            try:
                torch.save(obj, writer)
            except RuntimeError:
                if writer.failure is None:
                    raise
                raise writer.failure from None
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
        with open_output(temp_journal) as f:
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
        if not is_regular_file(path):  # a FIFO would block the open
            raise ValueError("it is not a plain file")
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
        reason = first_line(error)
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
