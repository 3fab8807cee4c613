"""One training run per checkpoint folder."""

import fcntl
import os
import socket
import time

from fastp2p.checkpoint_sets import write_error
from fastp2p.errors import CheckpointError

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
