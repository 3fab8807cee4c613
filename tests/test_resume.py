"""Trustworthy runs through the CLI: resumes from any state the trainer writes, the LR rule for resumes, one run
per folder, no non-finite weights on disk, one-line errors, epoch snapshots without optimizer state, and random
kill -9s (many inside saves) that still end bit-identical to an uninterrupted run."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from fastp2p import train as train_cli
from fastp2p.checkpoint import read_checkpoint
from fastp2p.run_lock import FolderLock
from tests.test_train_cli import aligned_root, unaligned_root  # noqa: F401 (fixtures used by name)
from tests.test_train_cli import pix2pix_flags, small_net_flags, write_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR_LINE = re.compile(r"learning rate (-?\d+\.\d+) -> (-?\d+\.\d+)")


@pytest.fixture
def three_pairs(tmp_path):
    root = tmp_path / "three"
    write_images(root / "train", 3, (72, 36), seed=0)
    return str(root)


def weights(folder, prefix="latest", net="G"):
    return read_checkpoint(os.path.join(folder, f"{prefix}_net_{net}.pth"))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def lr_changes(text):
    return [(float(old), float(new)) for old, new in LR_LINE.findall(text)]


def test_a_stop_on_the_last_iteration_of_an_epoch_resumes(tmp_path, three_pairs, capsys):
    """iter_3 is written on epoch 1's last iteration, before its end-of-epoch steps: the resume runs no batch of
    epoch 1, then its end, then epoch 2, and ends where an uninterrupted run ends."""
    flags = pix2pix_flags(tmp_path, three_pairs, name="whole") + ["--save_latest_freq", "3", "--save_by_iter"]
    assert train_cli.main(flags) == 0
    stopped = pix2pix_flags(tmp_path, three_pairs, name="cut") + ["--save_latest_freq", "3", "--save_by_iter"]
    stopped[stopped.index("--n_epochs_decay") + 1] = "0"  # the same first epoch, then the run ends
    assert train_cli.main(stopped) == 0
    capsys.readouterr()
    resumed = pix2pix_flags(tmp_path, three_pairs, name="cut") + ["--save_latest_freq", "3", "--save_by_iter",
                                                                  "--continue_train", "--load_iter", "3"]
    assert train_cli.main(resumed) == 0
    out = capsys.readouterr().out
    assert "resuming exactly from 'iter_3'" in out and "epoch 1, 3 images into it" in out
    checkpoints = tmp_path / "checkpoints"
    assert_same_weights(weights(checkpoints / "whole"), weights(checkpoints / "cut"))


def test_extending_a_finished_run_trains_at_the_rate_of_the_new_schedule(tmp_path, aligned_root, capsys):
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=(1, 0))
    assert train_cli.main(flags) == 0
    capsys.readouterr()
    flags[flags.index("--n_epochs") + 1] = "2"
    assert train_cli.main(flags + ["--continue_train"]) == 0
    assert lr_changes(capsys.readouterr().out) == [(0.0002, 0.0)]  # epoch 2 at the full rate, then the decay


def test_a_finished_run_resumed_as_is_says_there_is_nothing_to_train(tmp_path, aligned_root, capsys):
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=(1, 0))
    assert train_cli.main(flags) == 0
    capsys.readouterr()
    assert train_cli.main(flags + ["--continue_train"]) == 2
    assert "nothing to train: the training state is at epoch 2, past --n_epochs + --n_epochs_decay = 1" in \
        capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("epoch_state", [False, True])
def test_the_references_epoch_count_resume_never_goes_negative(tmp_path, aligned_root, capsys, epoch_state):
    """--continue_train --epoch 2 --epoch_count 3 after a 4-epoch run: weights only (the reference's rule) or, with
    --save_epoch_state, exactly; both train epochs 3 and 4 at the schedule's rates."""
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=(2, 2)) + (["--save_epoch_state"] if epoch_state else [])
    assert train_cli.main(flags) == 0
    first = lr_changes(capsys.readouterr().out)
    assert train_cli.main(flags + ["--continue_train", "--epoch", "2", "--epoch_count", "3"]) == 0
    out = capsys.readouterr().out
    assert ("resuming exactly from '2'" in out) == epoch_state
    assert lr_changes(out) == first[2:] == [(pytest.approx(0.0001333, abs=1e-7), pytest.approx(0.0000667, abs=1e-7)),
                                            (pytest.approx(0.0000667, abs=1e-7), 0.0)]


def test_a_second_run_into_a_live_runs_folder_is_refused(tmp_path, aligned_root, capsys):
    folder = tmp_path / "checkpoints" / "p2p"
    live = FolderLock(str(folder)).acquire()
    try:
        assert train_cli.main(pix2pix_flags(tmp_path, aligned_root)) == 2
    finally:
        live.release()
    err = capsys.readouterr().err
    assert f"another run is training into {folder} (pid {os.getpid()} on " in err and err.count("\n") == 1
    assert not (folder / "train_opt.txt").exists()


@pytest.mark.parametrize("continue_train", [False, True])
def test_a_crafted_journal_in_a_shared_folder_stops_the_run_before_it_touches_anything(tmp_path, aligned_root,
                                                                                      capsys, continue_train):
    """A downloaded checkpoint folder whose save journal would move a file over one outside the folder: every start
    with that --name (a fresh run too, which runs the recovery) stops in one line, and no file is moved."""
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=(1, 0))
    assert train_cli.main(flags) == 0
    folder = tmp_path / "checkpoints" / "p2p"
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"the user's file")
    (folder / ".tmp_0123456789ab_latest_net_G.pth").write_bytes(b"attacker's bytes")
    (folder / ".commit_0123456789ab.json").write_text(
        '{"files": {"../../victim.txt": ".tmp_0123456789ab_latest_net_G.pth"}}')
    before = sorted(os.listdir(folder)), (folder / "latest_net_G.pth").read_bytes()
    capsys.readouterr()
    assert train_cli.main(flags + (["--continue_train", "--n_epochs", "2"] if continue_train else [])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"refusing the save journal {folder / '.commit_0123456789ab.json'}" in err
    assert victim.read_bytes() == b"the user's file"
    assert (sorted(os.listdir(folder)), (folder / "latest_net_G.pth").read_bytes()) == before


def test_diverged_weights_are_never_saved(tmp_path, unaligned_root, capsys):
    flags = ["--model", "cycle_gan", "--dataroot", unaligned_root, *small_net_flags(tmp_path, "huge"), "--seed", "5",
             "--n_epochs", "1", "--n_epochs_decay", "0", "--print_freq", "100", "--pool_size", "3",
             "--save_latest_freq", "1", "--lr", "1e30"]
    assert train_cli.main(flags) == 2
    err = capsys.readouterr().err
    assert "not saving 'latest' at epoch 1, iteration 1: the weights of G_A, G_B, D_A, D_B are not finite" in err
    assert "the last good checkpoint is none (nothing saved yet)" in err
    assert not (tmp_path / "checkpoints" / "huge" / "latest_net_G_A.pth").exists()


def test_an_incomplete_set_falls_back_to_the_newest_complete_one(tmp_path, aligned_root, capsys):
    flags = pix2pix_flags(tmp_path, aligned_root) + ["--save_latest_freq", "2", "--save_by_iter"]
    assert train_cli.main(flags) == 0
    folder = tmp_path / "checkpoints" / "p2p"
    os.replace(folder / "1_net_G.pth", folder / "latest_net_G.pth")  # latest's G is now another save's
    capsys.readouterr()
    assert train_cli.main(flags + ["--continue_train", "--n_epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert ("'latest' is not a complete checkpoint set (latest_net_G.pth is not the file saved with its training "
            "state): resuming from 'iter_12' instead") in out
    assert "resuming exactly from 'iter_12'" in out


def test_a_training_state_missing_keys_is_a_one_line_error(tmp_path, aligned_root, capsys):
    flags = pix2pix_flags(tmp_path, aligned_root)
    assert train_cli.main(flags) == 0
    path = tmp_path / "checkpoints" / "p2p" / "latest_train_state.pth"
    state = read_checkpoint(str(path))
    del state["epoch"]
    torch.save(state, path)
    capsys.readouterr()
    assert train_cli.main(flags + ["--continue_train"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot resume from 'latest'" in err and "its training state lacks epoch" in err


def test_epoch_snapshots_hold_the_networks_linked_to_latest(tmp_path, aligned_root):
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root)) == 0
    folder = tmp_path / "checkpoints" / "p2p"
    assert not (folder / "1_train_state.pth").exists() and not (folder / "2_train_state.pth").exists()
    for net in ("G", "D"):  # epoch 2 was saved with the last latest: the same bytes, stored once
        assert os.stat(folder / f"2_net_{net}.pth").st_ino == os.stat(folder / f"latest_net_{net}.pth").st_ino
        assert os.stat(folder / f"1_net_{net}.pth").st_ino != os.stat(folder / f"latest_net_{net}.pth").st_ino


ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""What a trainer subprocess compared bit for bit runs with: one intra-op thread, as the in-process tests run
(conftest.single_threaded). With two threads this CPU's kernels are not bit-reproducible under load: two
uninterrupted runs of the same flags were seen to end with different weights, so a comparison across processes
would fail without any resume bug."""

KILL_AT = """
import os, signal, sys
from fastp2p import checkpoint_sets, train
point, save = sys.argv[1], int(sys.argv[2])
saves = [0]
commit, roll_forward, replace = checkpoint_sets.CheckpointSet._commit, checkpoint_sets.roll_forward, os.replace
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def counted_commit(self):
    saves[0] += 1
    if point == "before_commit" and saves[0] == save:
        die()
    commit(self)
def killed_roll_forward(folder, journal, staged):
    if point == "after_commit" and saves[0] == save:
        die()
    if point == "mid_roll_forward" and saves[0] == save:
        def replace_once(source, target):
            replace(source, target)
            die()
        checkpoint_sets.os.replace = replace_once
    roll_forward(folder, journal, staged)
checkpoint_sets.CheckpointSet._commit = counted_commit
checkpoint_sets.roll_forward = killed_roll_forward
sys.exit(train.main(sys.argv[3:]))
"""
"""A trainer that kills itself with SIGKILL at an exact instant of its ``save``-th checkpoint save: before the
journal's rename (before_commit), just after it (after_commit), or after the first file is renamed into place
(mid_roll_forward)."""


def run_cli(flags, **popen):
    return subprocess.Popen([sys.executable, "-m", "fastp2p.train", *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **ONE_THREAD}, **popen)


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory):
    """An uninterrupted run of kill_flags, and its flags maker."""
    tmp_path = tmp_path_factory.mktemp("whole")
    root = tmp_path / "aligned"
    write_images(root / "train", 6, (72, 36), seed=0)

    def kill_flags(name):
        return pix2pix_flags(tmp_path, str(root), name=name, epochs=(1, 1)) + ["--save_latest_freq", "1",
                                                                               "--print_freq", "100"]
    process = run_cli(kill_flags("whole"))
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    return tmp_path / "checkpoints", kill_flags


@pytest.mark.slow
@pytest.mark.parametrize("point, save, resumed_at, recovered", [
    ("before_commit", 7, "epoch 1, 6 images into it", "removed 5 temporary file(s)"),  # the epoch-end save, linked
    ("after_commit", 7, "epoch 2, 0 images into it", "finished 1 checkpoint save(s)"),
    ("mid_roll_forward", 7, "epoch 2, 0 images into it", "finished 1 checkpoint save(s)"),
    ("after_commit", 3, "epoch 1, 3 images into it", "finished 1 checkpoint save(s)"),
])
def test_a_kill_at_each_instant_of_a_save_resumes_bit_identical(whole_run, point, save, resumed_at, recovered):
    """kill -9 at an exact instant of a save (no timer): the resume recovers the folder, continues from the set the
    commit point says, and ends with an uninterrupted run's weights bit for bit."""
    checkpoints, kill_flags = whole_run
    name = f"{point}_{save}"
    killed = subprocess.run([sys.executable, "-c", KILL_AT, point, str(save), *kill_flags(name)], cwd=ROOT,
                            capture_output=True, text=True, env={**os.environ, **ONE_THREAD}, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    resumed = run_cli(kill_flags(name) + ["--continue_train"])
    output, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, output
    assert recovered in output and "resuming exactly from 'latest'" in output and resumed_at in output, output
    for net in ("G", "D"):
        assert_same_weights(weights(checkpoints / "whole", net=net), weights(checkpoints / name, net=net))
        assert_same_weights(weights(checkpoints / "whole", "1", net), weights(checkpoints / name, "1", net))


@pytest.mark.slow
def test_random_kills_then_resumes_end_bit_identical(tmp_path, aligned_root):
    """kill -9 at random instants of a run that saves every iteration (so many kills land inside a save), each
    followed by --continue_train, until a run finishes: its weights equal an uninterrupted run's bit for bit. Both
    sides run on one thread (ONE_THREAD); a failure lists each attempt's kill time, resume lines and files."""
    def flags(name):
        return pix2pix_flags(tmp_path, aligned_root, name=name, epochs=(2, 1)) + ["--save_latest_freq", "1",
                                                                                  "--print_freq", "100"]
    started = time.monotonic()
    whole = run_cli(flags("whole"))
    output, _ = whole.communicate(timeout=120)
    assert whole.returncode == 0, output
    # kills at 15-50 % of an uninterrupted run's time, however fast this machine is: the first attempt stops before
    # half the run, so the second, with more than half left, is killed too
    run_s = time.monotonic() - started
    chaos = tmp_path / "checkpoints" / "chaos"
    seed = os.getpid()
    draw = random.Random(seed)
    kills, history = 0, [f"draws seeded {seed}"]  # what each attempt did, for the message of a failure
    for attempt in range(12):
        resume = ["--continue_train"] if (chaos / "latest_train_state.pth").exists() else []
        process = run_cli(flags("chaos") + resume)
        timeout = draw.uniform(0.15, 0.5) * run_s if attempt < 8 else 120
        try:
            output, _ = process.communicate(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            output, _ = process.communicate()
            kills += 1
        finally:
            said = [line for line in (output or "").splitlines() if line.startswith(("resuming", str(chaos)))]
            history.append(f"attempt {attempt} {resume} killed at {timeout:.2f}s: {said}; then "
                           f"{sorted(os.listdir(chaos)) if chaos.is_dir() else []}")
    finished_before_exit = "nothing to train: the training state is at epoch 4" in output  # killed after its last save
    assert process.returncode == 0 or (process.returncode == 2 and finished_before_exit), output
    assert kills >= 2, f"only {kills} kills: the run finished too soon to test resumes"
    for net in ("G", "D"):
        try:
            assert_same_weights(weights(tmp_path / "checkpoints" / "whole", net=net), weights(chaos, net=net))
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n" + "\n".join(history)) from None
    assert not [entry for entry in os.listdir(chaos) if entry.startswith((".tmp_", ".commit_"))]


def test_inference_refuses_non_finite_weights(tmp_path, aligned_root, capsys):
    from fastp2p import test as test_cli

    flags = pix2pix_flags(tmp_path, aligned_root)
    assert train_cli.main(flags) == 0
    path = tmp_path / "checkpoints" / "p2p" / "latest_net_G.pth"
    state = read_checkpoint(str(path))
    next(value for value in state.values() if value.is_floating_point())[0] = float("nan")
    torch.save(state, path)
    capsys.readouterr()
    test_flags = [flag for flag in flags if flag not in ("--no_tensorboard",)]
    test_flags = test_flags[:test_flags.index("--seed")] + ["--results_dir", str(tmp_path / "results")]
    assert test_cli.main(test_flags) == 2
    assert "the weights of G in " in capsys.readouterr().err
    assert not (tmp_path / "results" / "p2p" / "test_latest" / "images").exists() or \
        not os.listdir(tmp_path / "results" / "p2p" / "test_latest" / "images")


def test_a_second_stop_during_a_save_exits_in_one_line_and_keeps_the_old_set(tmp_path, aligned_root, capsys,
                                                                             monkeypatch):
    """The second Ctrl-C or SIGTERM raises KeyboardInterrupt wherever the trainer is (request_stop): here inside
    a save, after the networks and before the training state are staged."""
    from fastp2p.checkpoint_sets import CheckpointSet

    flags = pix2pix_flags(tmp_path, aligned_root, epochs=(1, 0))
    assert train_cli.main(flags) == 0
    folder = tmp_path / "checkpoints" / "p2p"
    before = {name: (folder / name).read_bytes() for name in os.listdir(folder) if name.endswith(".pth")}
    stage = CheckpointSet.save

    def interrupted(self, name, obj):
        if name.endswith("_train_state.pth"):
            raise KeyboardInterrupt
        return stage(self, name, obj)

    monkeypatch.setattr(CheckpointSet, "save", interrupted)
    capsys.readouterr()
    assert train_cli.main(flags + ["--continue_train", "--n_epochs", "2"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastp2p.train: interrupted; every checkpoint set in "), err
    assert {name: (folder / name).read_bytes() for name in os.listdir(folder) if name.endswith(".pth")} == before
    assert not [name for name in os.listdir(folder) if name.startswith(".tmp_")]


def test_a_training_state_of_an_earlier_fastp2p_still_resumes_and_says_it_is_unchecked(tmp_path, aligned_root,
                                                                                        capsys):
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=(1, 0))
    assert train_cli.main(flags) == 0
    path = tmp_path / "checkpoints" / "p2p" / "latest_train_state.pth"
    state = read_checkpoint(str(path))
    del state["networks"]  # what fastp2p wrote before checkpoint sets
    torch.save(state, path)
    capsys.readouterr()
    assert train_cli.main(flags + ["--continue_train", "--n_epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "'latest' was saved by an earlier fastp2p, without the digests" in out
    assert "resuming exactly from 'latest'" in out
