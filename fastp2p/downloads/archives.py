"""A downloaded dataset archive, checked in full and then unpacked so that nothing in it lands outside its folder.

The check reads every byte before anything is written: a .tar.gz through gzip (whose CRC and length trailer catch a
truncated or altered file) and then tar's headers, a .zip through every member's CRC. Then every member must be a
plain file or folder with a relative name that stays inside: absolute names, ``..`` parts, symbolic and hard links,
devices and FIFOs refuse the whole archive, before any file is written (a link could point a later member at any
file of the user's). Unpacking goes to a hidden folder beside the target, which becomes the target once complete,
so that an interrupted run never leaves half a dataset under the set's name.
"""

import glob
import gzip
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass

from fastp2p.errors import DownloadError

CHUNK_BYTES = 1 << 20
SKIPPED_PREFIX = "__MACOSX/"  # macOS's resource forks that its zip tool adds: no part of a dataset
DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Member:
    name: str
    is_dir: bool
    refusal: str | None  # why the member may not be unpacked, None when it may


def tar_members(archive):
    for info in archive.getmembers():
        kind = None if info.isreg() or info.isdir() else (
            "a symbolic link" if info.issym() else "a hard link" if info.islnk() else "a device or FIFO")
        yield Member(info.name, info.isdir(), kind and f"it is {kind}"), info


def zip_members(archive):
    for info in archive.infolist():
        mode = info.external_attr >> 16  # a Unix file type, where the zip tool recorded one
        kind = None if stat.S_IFMT(mode) in (0, stat.S_IFREG, stat.S_IFDIR) else (
            "a symbolic link" if stat.S_ISLNK(mode) else "a device, FIFO or socket")
        yield Member(info.filename, info.is_dir(), kind and f"it is {kind}"), info


def name_refusal(name):
    """Why a member's name would place it outside the target folder (or nowhere), None when it stays inside."""
    if not name or "\0" in name:
        return "its name is empty or holds a NUL"
    if name.startswith(("/", "\\")) or DRIVE.match(name):
        return "its name is absolute"
    if "\\" in name:
        return "its name holds a backslash, a folder separator on Windows"
    if ".." in name.split("/"):
        return "its name climbs out with '..'"
    return None


def verify(path):
    """Read the archive at ``path`` in full; a one-line error naming it when it is truncated or corrupt."""
    try:
        if path.endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
            if bad is not None:
                raise zipfile.BadZipFile(f"member {bad} fails its CRC check")
        else:
            with gzip.open(path, "rb") as stream:
                while stream.read(CHUNK_BYTES):
                    pass
            with tarfile.open(path, "r:gz") as archive:
                archive.getmembers()
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError) as error:
        raise DownloadError(f"{path} is corrupt or incomplete ({type(error).__name__}: {error}); it was removed, run "
                            f"the same command again to download it anew") from None


def open_archive(path):
    return zipfile.ZipFile(path) if path.endswith(".zip") else tarfile.open(path, "r:gz")


def members_of(archive):
    return zip_members(archive) if isinstance(archive, zipfile.ZipFile) else tar_members(archive)


def unsafe_member(path, archive):
    """The first member that may not be unpacked, as one line, or None."""
    for member, _ in members_of(archive):
        refusal = member.refusal or name_refusal(member.name)
        if refusal:
            return f"refusing to unpack {path}: its member '{member.name}' could write outside the dataset's " \
                   f"folder ({refusal}); nothing was unpacked"
    return None


def unpack(path, target):
    """Check the archive at ``path`` and unpack it as the folder ``target`` (see the module doc), then remove it.
    An archive whose members sit in one folder named as the target (the reference's ``facades/train/...``) gives
    that folder's contents; any other archive is unpacked as it is. A refused archive is removed; one that could
    not be written out (a full disk) is kept for the next run."""
    try:
        verify(path)
        with open_archive(path) as archive:
            refusal = unsafe_member(path, archive)
        if refusal:
            raise DownloadError(refusal)
    except DownloadError:
        os.remove(path)
        raise
    parent = os.path.dirname(os.path.abspath(target))
    for stale in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(os.path.basename(target))}.*.unpacking")):
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed outright (SIGKILL) while it unpacked
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".unpacking", dir=parent)
    try:
        with open_archive(path) as archive:
            write_members(archive, staging)
        inner = os.path.join(staging, os.path.basename(target))
        os.replace(inner if os.listdir(staging) == [os.path.basename(target)] and os.path.isdir(inner)
                   else staging, target)
    except OSError as error:
        raise DownloadError(f"cannot unpack {path} into {parent}: {error.strerror or error}; the archive is kept "
                            f"for the next run") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    os.remove(path)


def write_members(archive, folder):
    """Write every plain file and folder of an archive already checked by unsafe_member under ``folder``."""
    root = os.path.realpath(folder)
    for member, info in members_of(archive):
        if member.name.startswith(SKIPPED_PREFIX):
            continue
        destination = os.path.realpath(os.path.join(root, member.name))
        if os.path.commonpath([root, destination]) != root:  # the resolved path, checked apart from the name rules
            raise DownloadError(f"refusing to unpack '{member.name}': it resolves outside {folder}")
        if member.is_dir:
            os.makedirs(destination, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        source = archive.open(info) if isinstance(archive, zipfile.ZipFile) else archive.extractfile(info)
        with source, open(destination, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK_BYTES)
