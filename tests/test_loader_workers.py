"""The torch loader's worker processes: how they start, that every start method yields the same batches, that
closing the loader ends them (a test or run that leaves processes behind is a bug), and that none outlives its
trainer, however the trainer dies."""

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from fastp2p.data import create_dataset
from tests.test_data import aligned_root, make_opt
from tests.test_train_cli import pix2pix_flags, write_images


def paths_and_pixels(loader):
    return [(batch["A_paths"], batch["A"]) for batch in loader]


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_every_start_method_yields_the_spawned_workers_batches(tmp_path, method):
    root = aligned_root(tmp_path, count=5)
    spawned = create_dataset(make_opt(root, num_threads=1))
    assert spawned.dataloader.multiprocessing_context.get_start_method() == "spawn"  # the default
    other = create_dataset(make_opt(root, num_threads=1, worker_start=method))
    try:
        for (paths, pixels), (other_paths, other_pixels) in zip(paths_and_pixels(spawned), paths_and_pixels(other),
                                                                strict=True):
            assert paths == other_paths
            torch.testing.assert_close(pixels, other_pixels, rtol=0, atol=0)
    finally:
        spawned.close()
        other.close()


@pytest.mark.slow
def test_close_ends_the_persistent_workers(tmp_path):
    loader = create_dataset(make_opt(aligned_root(tmp_path, count=4), num_threads=2))
    before = set(multiprocessing.active_children())
    list(loader)
    assert len(set(multiprocessing.active_children()) - before) == 2  # persistent: alive between epochs
    loader.close()
    assert not set(multiprocessing.active_children()) - before
    loader.close()  # a second close is harmless


def test_workers_of_the_trainers_options_start(tmp_path):
    """The trainer's options carry their argparse parser, which cannot be pickled to a spawned worker."""
    from fastp2p.options import parse_options

    opt = parse_options(["--dataroot", str(aligned_root(tmp_path, count=2)), "--dataset_mode", "aligned",
                         "--num_threads", "1", "--load_size", "72", "--crop_size", "64", "--seed", "1"])
    loader = create_dataset(opt)
    try:
        assert [len(batch["A_paths"]) for batch in loader] == [1, 1]
    finally:
        loader.close()


# -- no process outlives its run ---------------------------------------------------------------------------------
# A real trainer runs as a subprocess in its own process group, stdout and stderr to pipes, every process of the
# run marked by an environment variable; tests/worker_stages/sitecustomize.py holds its workers at a start-up stage.

WORKTREE = Path(__file__).resolve().parent.parent
RUN_MARK = "FASTP2P_TEST_RUN"
GONE_WITHIN_S = 5  # the death signal ends a worker at once; torch's own watchdog would take 5 s, where it works


class Run:
    """One trainer subprocess (spawn workers, --num_threads 2) and every process that carries its mark."""

    def __init__(self, tmp_path, worker_start="spawn", pause=None):
        root = tmp_path / "data"
        write_images(root / "train", 6, (72, 36), seed=0)
        flags = pix2pix_flags(tmp_path, str(root), name="run", epochs=(50, 0))
        flags[flags.index("--num_threads") + 1] = "2"
        self.mark = uuid.uuid4().hex
        self.held = tmp_path / "held"
        self.held.mkdir()
        env = {**os.environ, RUN_MARK: self.mark,
               "PYTHONPATH": os.pathsep.join([str(WORKTREE / "tests" / "worker_stages"), str(WORKTREE)])}
        if pause:
            env["FASTP2P_TEST_PAUSE"] = f"{pause}:{self.held}"
        self.log = tmp_path / "checkpoints" / "run" / "loss_log.txt"
        self.process = subprocess.Popen([sys.executable, "-m", "fastp2p.train", *flags, "--worker_start", worker_start],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True, env=env, cwd=tmp_path)

    def pids(self):
        """The live processes of this run: their environment carries its mark (zombies hold nothing and show none)."""
        found = set()
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if f"{RUN_MARK}={self.mark}".encode() in environ.read().split(b"\0"):
                        found.add(int(entry))
            except (OSError, ValueError):
                continue  # not a process, gone, or not ours
        return found

    def workers(self):
        """The run's DataLoader workers: every process of it but the trainer, the resource tracker and fork server."""
        def helper(pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            return b"resource_tracker" in cmdline or b"forkserver import main" in cmdline

        return {pid for pid in self.pids() - {self.process.pid} if not helper(pid)}

    def wait_for(self, condition, what, timeout=120):
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None or time.monotonic() > deadline:
                out, err = self.process.communicate(timeout=GONE_WITHIN_S)
                pytest.fail(f"no {what} (exit code {self.process.returncode}):\n{out}\n{err}")
            time.sleep(0.05)

    def wait_for_held_workers(self):
        self.wait_for(lambda: len([p for p in self.held.iterdir() if p.name != "resume"]) == 2, "held workers")

    def wait_for_training(self):
        self.wait_for(lambda: self.log.is_file() and "(epoch" in self.log.read_text(), "loss line")

    def resume(self):
        (self.held / "resume").touch()

    def assert_nothing_left(self):
        """No process of the run within a few seconds, and both pipes at end of file: nothing holds them."""
        deadline = time.monotonic() + GONE_WITHIN_S
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = {}
        for pid in self.pids():
            with contextlib.suppress(OSError):
                left[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
        assert not left, f"left running {GONE_WITHIN_S} s after the kill: {left}"
        self.process.communicate(timeout=GONE_WITHIN_S)  # TimeoutExpired if a process still holds a pipe

    def kill(self):
        """Whatever happened: the group, and every marked process (a worker may have left the group)."""
        for pid in self.pids() | {self.process.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.communicate()


@contextlib.contextmanager
def trainer_run(tmp_path, **options):
    run = Run(tmp_path, **options)
    try:
        yield run
    finally:
        run.kill()


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("worker_start, stage", [("spawn", "interpreter"), ("spawn", "import"),
                                                 ("forkserver", "import")])
def test_a_trainer_killed_while_its_workers_start_leaves_no_process(tmp_path, worker_start, stage):
    """A spawned worker held before it reads anything finds its trainer gone when it goes on; one held in its
    imports dies with the trainer, as does a forkserver worker (and then the fork server and resource tracker)."""
    with trainer_run(tmp_path, worker_start=worker_start, pause=stage) as run:
        run.wait_for_held_workers()
        os.kill(run.process.pid, signal.SIGKILL)
        run.resume()
        run.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_trainer_killed_as_soon_as_its_workers_exist_leaves_no_process(tmp_path):
    with trainer_run(tmp_path) as run:
        run.wait_for(lambda: len(run.workers()) == 2, "spawned workers")
        os.kill(run.process.pid, signal.SIGKILL)
        run.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_kill_of_the_trainers_process_group_reaches_its_workers(tmp_path):
    with trainer_run(tmp_path) as run:
        run.wait_for_training()
        workers = run.workers()
        assert len(workers) == 2
        assert {os.getpgid(pid) for pid in workers} == {run.process.pid}
        os.killpg(run.process.pid, signal.SIGKILL)
        run.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigterm_to_the_group_while_workers_start_still_saves(tmp_path):
    """Workers share the trainer's group, so a stop signal reaches them too: they leave it to the trainer."""
    with trainer_run(tmp_path, pause="import") as run:
        run.wait_for_held_workers()
        os.killpg(run.process.pid, signal.SIGTERM)
        time.sleep(0.5)  # delivered before the workers go on
        run.resume()
        out, err = run.process.communicate(timeout=120)
        assert run.process.returncode == 130, out + err
        assert "stopped; resume with --continue_train" in out
        assert (tmp_path / "checkpoints" / "run" / "latest_train_state.pth").is_file()
        run.assert_nothing_left()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_worker_ends_the_run_in_one_line(tmp_path):
    with trainer_run(tmp_path) as run:
        run.wait_for_training()
        worker = min(run.workers())
        os.kill(worker, signal.SIGKILL)
        out, err = run.process.communicate(timeout=120)
        assert run.process.returncode == 2, out + err
        assert len(err.splitlines()) == 1, err
        assert err.startswith("fastp2p.train: error: "), err
        assert f"pid {worker}" in err and "SIGKILL" in err and "--num_threads" in err, err
        run.assert_nothing_left()
