"""Jobs as torchrun runs them, on the CPU (gloo): two agents meeting at a c10d rendezvous on the loopback interface
(two nodes on one machine), a node that cannot reach its rendezvous, and workers killed under --max-restarts.

Every job runs in sessions of its own with a marker in its environment; whatever the outcome, the ``finally`` of
``Jobs`` ends every process that carries the marker (agents and the workers they start in sessions of their own),
so no test leaves a process behind.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import torch
import torch.distributed as dist

from fastp2p.checkpoint import read_checkpoint
from fastp2p.distributed import decided_on_main
from fastp2p.run_lock import FolderLock
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "ddp_worker.py")
FACADES = os.path.join(SHARED_DATA, "facades")
needs_facades = pytest.mark.skipif(not os.path.isdir(FACADES), reason="the real facades set is not here")
MARKER = "FASTP2P_TEST_JOB"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked_processes(marker):
    """The pids of the processes whose environment holds ``MARKER=marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if f"{MARKER}={marker}".encode() in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                pass  # gone, or not ours to read
    return found


class Jobs:
    """Launcher processes started with one marker; ``close`` ends all of them and every process they started."""

    def __init__(self):
        self.marker = uuid.uuid4().hex
        self.started = []

    def start(self, command, log, env=None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, MARKER: self.marker, **(env or {})}
        out = open(log, "w")
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        out.close()
        self.started.append((process, log))
        return process

    def wait(self, timeout):
        """Each launcher's exit code and output, once all have exited (at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        results = []
        for process, log in self.started:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            with open(log) as f:
                results.append((process.returncode, f.read()))
        return results

    def close(self):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = marked_processes(self.marker)
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            if pids and sig == signal.SIGTERM:
                time.sleep(1)
        for process, _ in self.started:
            if process.poll() is None:
                process.wait(timeout=10)
        assert not marked_processes(self.marker), "processes of the job were left behind"


def run_jobs(logs, commands, timeout, env=None):
    """Start ``commands`` together (their output in the folder ``logs``), and return each one's (code, output)."""
    os.makedirs(logs, exist_ok=True)
    jobs = Jobs()
    try:
        for index, command in enumerate(commands):
            jobs.start(command, logs / f"launcher{index}.log", env)
        return jobs.wait(timeout)
    finally:
        jobs.close()


def torchrun(*args):
    return [sys.executable, "-m", "torch.distributed.run", *args]


def two_agents(port, *target):
    """The commands of two nodes of one job (what two machines would run, with the endpoint's host for 127.0.0.1)."""
    return [[sys.executable, "-m", "fastp2p.launch", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
             "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "two_nodes", "--rdzv_conf", "join_timeout=60",
             *target]] * 2


def facades_flags(checkpoints, images=4, epochs=(1, 1), extra=()):
    """A tiny pix2pix on real photos: labels -> photo on ``images`` facades, 32-pixel crops, dropout on (into
    ``checkpoints``, or a --checkpoints_dir given apart)."""
    return ["--model", "pix2pix", "--dataroot", FACADES, "--direction", "BtoA", "--max_dataset_size", str(images),
            "--name", "job", *(["--checkpoints_dir", str(checkpoints)] if checkpoints else []), "--gpu_ids", "-1",
            "--num_threads", "0", "--ngf", "8", "--ndf", "8", "--netG", "resnet_6blocks", "--load_size", "36", "--crop_size", "32",
            "--no_tensorboard", "--seed", "3", "--n_epochs", str(epochs[0]), "--n_epochs_decay", str(epochs[1]),
            "--print_freq", "2", "--display_freq", "2", "--update_html_freq", "2", "--save_epoch_freq", "1", *extra]


def assert_ok(results):
    for code, output in results:
        assert code == 0, output[-4000:]


def network_files(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".pth") and "_net_" in name)


def assert_same_files(folder_a, folder_b, names):
    for name in names:
        a, b = read_checkpoint(os.path.join(folder_a, name)), read_checkpoint(os.path.join(folder_b, name))
        assert list(a) == list(b), name
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key} differs"


def loss_lines(folder):
    with open(os.path.join(folder, "loss_log.txt")) as f:
        return [line.split(") ", 1)[1] for line in f if line.startswith("(epoch:")]  # without the timings


def test_one_process_decides_alone():
    """Without a process group the decision is simply taken here."""
    assert decided_on_main(lambda: "latest") == "latest"


@pytest.mark.slow
@needs_facades
def test_two_nodes_write_what_one_node_of_two_processes_writes(tmp_path):
    one = tmp_path / "one"
    assert_ok(run_jobs(tmp_path / "a", [torchrun("--standalone", "--nproc_per_node", "2", "-m", "fastp2p.train",
                                                 *facades_flags(one))], timeout=120))
    two = tmp_path / "two"
    results = run_jobs(tmp_path / "b", two_agents(free_port(), "-m", "fastp2p.train", *facades_flags(two)),
                       timeout=120)
    assert_ok(results)
    one_run, two_run = one / "job", two / "job"
    names = network_files(one_run)
    assert {"1_net_G.pth", "2_net_D.pth", "latest_net_G.pth"} <= set(names)
    assert network_files(two_run) == names
    assert_same_files(one_run, two_run, names)
    assert loss_lines(two_run) == loss_lines(one_run) and len(loss_lines(two_run)) == 2  # one writer: rank 0
    output = "".join(text for _, text in results)
    for line in ("saving the model at the end of epoch 1", "The number of training images = 4", "engine: "):
        assert output.count(line) == 1, f"{line!r} not said by rank 0 alone:\n{output}"
    assert os.path.isfile(two_run / "web" / "index.html")
    state_one, state_two = (read_checkpoint(str(run / "latest_train_state.pth")) for run in (one_run, two_run))
    assert (state_one["epoch"], state_one["total_iters"]) == (state_two["epoch"], state_two["total_iters"]) == (3, 4)


def two_static_nodes(port, target, node_flags):
    """Two nodes with fixed ranks (static rendezvous: node 0 holds rank 0), each with flags of its own."""
    return [[sys.executable, "-m", "fastp2p.launch", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
             "--master_addr", "127.0.0.1", "--master_port", str(port), *target, *flags]
            for node, flags in enumerate(node_flags)]


@pytest.mark.slow
@needs_facades
def test_the_lock_and_the_resume_point_are_rank_0s(tmp_path):
    """Two machines that do not share a disk, each with its own copy of the run's folder: the run lock and the
    resume point are rank 0's; rank 1 reads the set rank 0 chose, or says it cannot, and a resume continues as the
    uninterrupted run did."""
    whole, first, copy = tmp_path / "whole", tmp_path / "first", tmp_path / "copy"
    assert_ok(run_jobs(tmp_path / "w", [torchrun("--standalone", "--nproc_per_node", "2", "-m", "fastp2p.train",
                                                 *facades_flags(whole, epochs=(2, 0)))], timeout=120))
    assert_ok(run_jobs(tmp_path / "f", [torchrun("--standalone", "--nproc_per_node", "2", "-m", "fastp2p.train",
                                                 *facades_flags(first, epochs=(1, 0)))], timeout=120))
    shutil.copytree(first, copy)
    resume = ["-m", "fastp2p.train", *facades_flags(None, epochs=(2, 0), extra=["--continue_train"])]

    def nodes(folder_0, folder_1):
        return two_static_nodes(free_port(), resume, [["--checkpoints_dir", str(folder_0)],
                                                      ["--checkpoints_dir", str(folder_1)]])

    lock = FolderLock(str(first / "job")).acquire()
    try:
        results = run_jobs(tmp_path / "locked", nodes(first, copy), timeout=120)
    finally:
        lock.release()
    output = "".join(text for _, text in results)
    assert all(code != 0 for code, _ in results) and output.count("another run is training into") == 1, output

    results = run_jobs(tmp_path / "unshared", nodes(first, tmp_path / "empty"), timeout=120)
    output = "".join(text for _, text in results)
    assert all(code != 0 for code, _ in results), output
    assert output.count("rank 1 cannot read the checkpoint set 'latest' that rank 0 resumes from") == 1, output

    results = run_jobs(tmp_path / "resumed", nodes(first, copy), timeout=120)
    assert_ok(results)
    assert "".join(text for _, text in results).count("resuming exactly from 'latest'") == 1
    assert_same_files(whole / "job", first / "job", ["latest_net_G.pth", "latest_net_D.pth", "2_net_G.pth"])
    assert not os.path.exists(copy / "job" / "2_net_G.pth")  # rank 1 writes nothing


@pytest.mark.slow
def test_a_node_that_cannot_reach_the_rendezvous_says_so_in_one_line(tmp_path):
    """Nothing listens at the endpoint (is_host=0: this node does not start the store itself)."""
    port = free_port()
    start = time.monotonic()
    [(code, output)] = run_jobs(tmp_path / "r", [[
        sys.executable, "-m", "fastp2p.launch", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_conf", "is_host=0,read_timeout=3,join_timeout=3",
        "-m", "fastp2p.train", "--gpu_ids", "-1"]], timeout=60)
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastp2p.launch: error: ") and f"127.0.0.1:{port}" in lines[0], \
        output
    assert time.monotonic() - start < 30


@pytest.mark.slow
def test_a_node_whose_peers_never_arrive_says_so_in_one_line(tmp_path):
    port = free_port()
    [(code, output)] = run_jobs(tmp_path / "r", [[
        sys.executable, "-m", "fastp2p.launch", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
        "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_conf", "join_timeout=3", "-m", "fastp2p.train",
        "--gpu_ids", "-1"]], timeout=60)
    assert code == 2
    lines = output.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "did not join" in lines[0], output


@pytest.mark.slow
def test_workers_exit_code_for_bad_input_is_the_launchers(tmp_path):
    """Both workers refuse a missing dataroot with exit code 2 (bad input): the launcher exits 2 too, as a script
    checking the code of ``python -m fastp2p.train`` expects, where torchrun says 1."""
    missing = tmp_path / "no_such_dataset"
    [(code, output)] = run_jobs(tmp_path / "r", [[
        sys.executable, "-m", "fastp2p.launch", "--standalone", "--nproc_per_node", "2", "-m", "fastp2p.train",
        "--dataroot", str(missing), "--gpu_ids", "-1", "--checkpoints_dir", str(tmp_path / "c")]], timeout=120)
    assert code == 2, output
    assert str(missing) in output


ELASTIC_FLAGS = dict(images=8, epochs=(1, 1), extra=["--save_latest_freq", "2", "--print_freq", "4"])
# 8 images, 2 ranks at batch 1: 4 iterations an epoch, counted as 4 images (one rank's). Checkpoint sets: 'latest'
# at iterations 2 and 4 (sets 1, 2), at the end of epoch 1 (set 3, with '1'), then 6 (4), 8 (5), end of epoch 2 (6)
KILLS = {  # where the kill lands, and what the restarted job says in the loss log
    "rank0-mid-iteration-1": ("0:iteration:1", "started over"),  # before any set: the restart trains from the start
    "rank1-mid-iteration-3": ("1:iteration:3", "resumed from 'latest'"),
    "rank0-inside-save-2": ("0:save:2", "resumed from 'latest'"),  # set 2 half staged: resumes from set 1
    "rank0-after-commit-3": ("0:commit:3", "resumed from 'latest'"),  # committed, not renamed: rolled forward
    "rank1-mid-iteration-7": ("1:iteration:7", "resumed from 'latest'"),
}


@pytest.mark.slow
@needs_facades
def test_killed_workers_restart_and_end_as_an_uninterrupted_run(tmp_path):
    """torchrun --max-restarts 1 restarts the job after a worker is killed (SIGKILL) at one of several instants;
    the restarted workers resume from the newest complete set without --continue_train, say so in the loss log, and
    end with the uninterrupted run's weights, bit for bit."""
    def job(checkpoints, kill=None):
        env = {"FASTP2P_TEST_KILL": kill} if kill else {}
        command = torchrun("--standalone", "--nproc_per_node", "2", "--max-restarts", "1", "--monitor-interval",
                           "0.2", WORKER, "cli", *facades_flags(checkpoints, **ELASTIC_FLAGS))
        return run_jobs(checkpoints / "logs", [command], timeout=180, env=env)

    [(code, output)] = job(tmp_path / "whole")
    assert code == 0, output[-4000:]
    assert output.count("saving the latest model (epoch 1, total_iters 2)") == 1, output  # rank 0's line alone
    whole = tmp_path / "whole" / "job"
    names = network_files(whole)
    for label, (kill, said) in KILLS.items():
        checkpoints = tmp_path / label
        [(code, output)] = job(checkpoints, kill)
        assert code == 0, f"{label}:\n{output[-4000:]}"
        folder = checkpoints / "job"
        with open(folder / "loss_log.txt") as f:
            log = f.read()
        assert f"restart 1 of the job (torchrun --max-restarts): {said}" in log, f"{label}: {log}"
        assert output.count("resuming exactly from") == (said != "started over"), f"{label}: {output[-4000:]}"
        assert network_files(folder) == names, label
        assert_same_files(whole, folder, names)
        assert not [entry for entry in os.listdir(folder) if entry.startswith((".tmp_", ".commit_"))], label
