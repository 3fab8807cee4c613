"""Loader workers that never outlive their trainer, and stop signals that reach the trainer alone.

A DataLoader worker ends with its trainer whenever the trainer dies (SIGKILL, the out-of-memory killer), at any
instant of the worker's start-up, so that nothing is left holding the run's stdout and stderr (a ``| tee``, a CI log
or a cluster's output capture would wait on them forever):

- a worker the trainer starts itself (spawn, fork) asks the kernel for a SIGKILL when its parent ends
  (PR_SET_PDEATHSIG), then exits if its parent is no longer the trainer (the death signal, armed too late, would not
  come). A spawned worker does so as it unpickles its name, the first thing it reads from the trainer, before its
  interpreter imports any of the trainer's modules (torch alone takes seconds); a forked one first thing in ``run``.
- a forkserver worker's parent is the fork server, which its workers keep alive: a thread of the worker watches the
  trainer (a pidfd) and ends the worker with it, from the same instant as a spawned worker's death signal.

The fork server and multiprocessing's resource tracker then end too: they run until the pipes that the trainer and
its workers hold are closed. Workers stay in the trainer's process group, so a kill of the group reaches them, but
they are born with SIGINT and SIGTERM blocked (a mask a process inherits from the thread that starts it and keeps
through exec): Ctrl-C, or a SIGTERM to the group (``timeout``, job control, a scheduler), leaves the trainer to finish
its iteration and save, and the trainer ends its workers itself, with SIGKILL where one does not exit.

The death signal follows the thread that started the worker: a loader's workers start from a thread that lives as
long as the loader (the trainer's main thread). Standard library only, so that a worker can run it before importing
anything else. Linux only; elsewhere ``worker_context`` gives multiprocessing's own contexts.
"""

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from multiprocessing import context, popen_fork, popen_forkserver, popen_spawn_posix

WORKER_START_METHODS = ("spawn", "forkserver", "fork")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH = "fastp2p-trainer-watch"


def die_with_parent_source(trainer):
    """Statements (standard library only) that SIGKILL this process when its parent ends, and end it now if its
    parent is no longer ``trainer`` (the pid of the trainer that started it)."""
    return ("import ctypes, os\n"
            f"ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, ctypes.c_ulong({int(signal.SIGKILL)}))\n"
            f"if os.getppid() != {int(trainer)}:\n"
            "    os._exit(1)\n")


def end_with_source(trainer, whole_group=False):
    """Statements (standard library only) that end this process when ``trainer`` ends (now, if it has), watched from
    a thread: for a process that the trainer did not start itself, whose death signal would follow another parent,
    or (``whole_group``) for the leader of a process group of its own, which ends the group: what it started too.
    Once a process: a second run finds the watch."""
    end = "os.killpg(0, signal.SIGKILL)" if whole_group else "os.kill(os.getpid(), signal.SIGKILL)"
    return ("import os, select, signal, threading\n"
            f"if not any(thread.name == {WATCH!r} for thread in threading.enumerate()):\n"
            "    try:\n"
            f"        trainer = os.pidfd_open({int(trainer)})\n"
            "    except ProcessLookupError:\n"
            f"        {end}\n"
            "    def watch():\n"
            "        select.select([trainer], [], [])  # readable once the trainer has exited\n"
            f"        {end}\n"
            f"    threading.Thread(target=watch, name={WATCH!r}, daemon=True).start()\n")


class ArmingName(str):
    """A worker's name whose unpickling runs ``source`` first: multiprocessing sends the name among the preparation
    data, the first bytes a spawned or forkserver-started worker reads and unpickles, before it imports the trainer's
    modules (torch alone takes seconds). Unpickled, it is the plain name (``eval`` returns it), and it needs nothing
    but builtins to unpickle."""

    def __new__(cls, name, source):
        self = super().__new__(cls, name)
        self.source = source
        return self

    def __reduce__(self):
        return eval, (f"exec({self.source!r}, {{}}) or {str(self)!r}",)


class KilledNotTerminated:
    """A worker blocks SIGTERM, so ending one that does not exit (torch's shutdown, multiprocessing's at-exit
    clean-up of daemonic children, which calls the Popen object's terminate) takes SIGKILL."""

    def terminate(self):
        self.kill()


class SpawnPopen(KilledNotTerminated, popen_spawn_posix.Popen):
    pass


class ForkserverPopen(KilledNotTerminated, popen_forkserver.Popen):
    pass


class ForkPopen(KilledNotTerminated, popen_fork.Popen):
    pass


class TrainerBoundWorker:
    """A worker process (mixed into multiprocessing's Process classes) started with the stop signals blocked."""

    def start(self):
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


class SpawnWorker(TrainerBoundWorker, context.SpawnProcess):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = ArmingName(self.name, die_with_parent_source(os.getpid()))

    @staticmethod
    def _Popen(process_obj):
        return SpawnPopen(process_obj)


class ForkserverWorker(TrainerBoundWorker, context.ForkServerProcess):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.name = ArmingName(self.name, end_with_source(os.getpid()))  # its parent is the fork server

    @staticmethod
    def _Popen(process_obj):
        return ForkserverPopen(process_obj)


class ForkWorker(TrainerBoundWorker, context.ForkProcess):
    @staticmethod
    def _Popen(process_obj):
        return ForkPopen(process_obj)

    def run(self):
        """A forked worker runs nothing of its own before this, only multiprocessing's after-fork bookkeeping."""
        exec(die_with_parent_source(multiprocessing.parent_process().pid), {})  # noqa: S102 (our own statements)
        super().run()


class SpawnWorkers(context.SpawnContext):
    Process = SpawnWorker


class ForkserverWorkers(context.ForkServerContext):
    Process = ForkserverWorker


class ForkWorkers(context.ForkContext):
    Process = ForkWorker


TRAINER_BOUND_CONTEXTS = {"spawn": SpawnWorkers, "forkserver": ForkserverWorkers, "fork": ForkWorkers}


def worker_context(method):
    """The multiprocessing context the loader's workers start from (``--worker_start``): on Linux, one whose
    workers never outlive the trainer (see the module's docstring)."""
    if method not in WORKER_START_METHODS:
        raise ValueError(f"--worker_start {method!r} is not one of {', '.join(WORKER_START_METHODS)}")
    if method not in multiprocessing.get_all_start_methods():
        raise ValueError(f"--worker_start {method} is not available on this platform; use spawn")
    return TRAINER_BOUND_CONTEXTS[method]() if sys.platform == "linux" else multiprocessing.get_context(method)


class WorkerDeaths:
    """Where a dead worker's error comes out. torch raises it from its SIGCHLD handler, wherever the trainer is when
    the worker dies (an optimizer step, the middle of a checkpoint save). Wrapping that handler, the error goes
    through while a loader fetches, and is otherwise kept for the next fetch, which raises it first: it always comes
    out of a loader's iteration, where the loader can say it in one line."""

    def __init__(self):
        self.torch_handler = None
        self.fetching = 0
        self.missed = None

    def __call__(self, signum, frame):
        try:
            self.torch_handler(signum, frame)
        except RuntimeError as error:
            if self.fetching:
                raise
            self.missed = error

    def wrap_torch_handler(self):
        """torch sets its handler once a process, from the main thread, as a loader first starts workers."""
        handler = signal.getsignal(signal.SIGCHLD)
        if self.torch_handler is None and callable(handler) and threading.current_thread() is threading.main_thread():
            self.torch_handler = handler
            signal.signal(signal.SIGCHLD, self)

    @contextlib.contextmanager
    def fetch(self):
        """Around a loader's fetch: a worker's death, now or since the last fetch, raises here."""
        self.fetching += 1
        try:
            if self.missed is not None:
                missed, self.missed = self.missed, None
                raise missed
            yield
        finally:
            self.fetching -= 1
            self.wrap_torch_handler()


WORKER_DEATHS = WorkerDeaths()
