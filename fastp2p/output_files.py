"""Opening what fastp2p writes into a run's folders (the checkpoint folder, the results folder) without following a
link planted there.

A run's folder may come from elsewhere (a downloaded or shared checkpoint folder): a link in it named like a file
fastp2p writes (``loss_log.txt``, ``train_opt.txt``, the run lock, the web page and its images) would make the next
run overwrite whatever the link points at. Every such file is opened here with ``O_NOFOLLOW``, and anything that is
not a plain file (a link, a FIFO, which would block the open, a device) or a folder that is a link is refused with
one line naming it.
"""

import errno
import os
import stat

from fastp2p.errors import OutputError

KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISDIR, "a folder"))


def kind_of(path):
    """What is at ``path`` when it is not a plain file, in words ('a symbolic link to X', 'a FIFO'), else None."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    for test, kind in KINDS:
        if test(mode):
            return f"{kind} to {os.readlink(path)}" if test is stat.S_ISLNK else kind
    return None


def refused(path, kind):
    return OutputError(f"refusing to write {path}: it is {kind}, and fastp2p writes only plain files and folders of "
                       f"its own in a run's folder (one from elsewhere may hold such traps); remove it and run again")


def open_plain(path, flags, mode=0o644):
    """``os.open(path, flags | O_NOFOLLOW)``, a file descriptor of a plain file; a link, a FIFO (opened without
    blocking) or a device at ``path`` is refused with one line. Other OSErrors (a read-only folder) propagate."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise refused(path, kind_of(path) or "not a plain file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refused(path, kind_of(path) or "not a plain file")
    os.set_blocking(fd, True)
    return fd


def open_output(path, mode="w", **keywords):
    """``open(path, mode)`` for writing ('w', 'a', 'wb', 'ab', newline=...) through open_plain: a planted link is
    refused, never followed."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode.startswith("a") else os.O_TRUNC)
    return os.fdopen(open_plain(path, flags), mode, **keywords)


def replace_output(path, text):
    """Write ``text`` as the file ``path`` whole or not at all: into ``path.writing`` first, then renamed over it, so
    that a kill mid-write leaves the previous file (a resume reads its flags from train_opt.txt). A planted link at
    ``path`` is refused, as by open_output."""
    kind = kind_of(path)
    if kind:
        raise refused(path, kind)
    staged = path + ".writing"
    with open_output(staged) as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(staged, path)


def output_folder(path):
    """Create ``path`` (and its parents); refuse it when it is a link, which would put the files elsewhere."""
    os.makedirs(path, exist_ok=True)
    if os.path.islink(path):
        raise refused(path, kind_of(path))
    return path
