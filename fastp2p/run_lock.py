"""One training run per checkpoint folder."""

import fcntl
import os
import socket
import time

from fastp2p.checkpoint_sets import write_error
from fastp2p.errors import CheckpointError
from fastp2p.output_files import open_plain

LOCK_NAME = ".fastp2p_run.lock"


class FolderLock:
    """One training run per checkpoint folder: an exclusive ``flock`` on a file in it, which the kernel releases
    when the holder dies (so the lock of a killed run is simply taken over), holding the holder's pid, host and
    start time for the message a second run gets. The holder removes the file when it is done."""

    def __init__(self, folder):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self.fd = None

    def acquire(self):
        while self.fd is None:
            fd = self.open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise CheckpointError(f"another run is training into {self.folder} ({holder}); stop it first, or "
                                      f"pick another --name") from None
            if self.is_current(fd):
                self.fd = fd
            else:  # locked a file its holder removed on release after this run opened it: open the new one
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                          f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        return self

    def open(self):
        try:
            os.makedirs(self.folder, exist_ok=True)
            return open_plain(self.path, os.O_RDWR | os.O_CREAT)
        except OSError as error:
            raise write_error(self.folder, "the run lock", error) from None

    def is_current(self, fd):
        """Whether ``fd`` is still the file at the lock's path (not one removed since it was opened)."""
        try:
            return os.path.samestat(os.fstat(fd), os.lstat(self.path))
        except FileNotFoundError:
            return False

    def release(self):
        """Remove the lock file, then drop the flock: a run that opened the file just before sees it is no longer
        the current one and opens a new one (is_current)."""
        if self.fd is not None:
            try:
                os.remove(self.path)
            except OSError:
                pass  # a read-only folder: the file stays, as a killed run's does, and is taken over
            os.close(self.fd)
            self.fd = None
