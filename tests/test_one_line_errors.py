"""The last tracebacks of bad input become one-line errors, exit 2, with nothing lost (issue 29, item 4); the
--save_by_iter resume the README promises (item 3); and what a user notices at a run's end (item 5)."""

import errno
import os
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from fastp2p import checkpoint_sets
from fastp2p import test as test_cli
from fastp2p import train as train_cli
from fastp2p import visualizer as visualizer_module
from fastp2p.run_lock import LOCK_NAME, FolderLock
from tests.test_resume import assert_same_weights, weights
from tests.test_train_cli import (
    aligned_root,  # noqa: F401 (a fixture used by name)
    pix2pix_flags,
    write_images,
)
from tests.test_untrusted_folder import inference_flags, one_line_error

ONE_EPOCH = (1, 0)


def set_files(folder):
    """name -> bytes of every checkpoint file in ``folder``, to show that a failed save lost nothing."""
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder)) if name.endswith(".pth")}


def parse_error(capsys, main, argv):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_a_seed_beyond_64_bits_is_a_flag_error(tmp_path, aligned_root, capsys):
    err = parse_error(capsys, train_cli.main, pix2pix_flags(tmp_path, aligned_root) + ["--seed", str(2**64)])
    assert "argument --seed: must be an integer from -2**63 to 2**63 - 1 (64 bits)" in err
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("flag", ["--input_nc", "--output_nc"])
def test_a_channel_count_images_cannot_give_is_a_flag_error(tmp_path, aligned_root, flag, capsys):
    err = parse_error(capsys, train_cli.main, pix2pix_flags(tmp_path, aligned_root) + [flag, "4"])
    assert f"{flag} 4: images are read as RGB (3 channels) or, with 1, as grayscale" in err


@pytest.mark.parametrize("workers", [0, 1])
def test_preprocess_none_on_images_too_small_to_round_is_one_line(tmp_path, workers, capsys):
    """A 2x2 A|B pair has 1-pixel halves, which --preprocess none rounds to nothing: the first file is checked when
    the dataset is built, a later one where it is loaded, also inside a loader worker."""
    root = tmp_path / "tiny"
    write_images(root / "train", 2, (72, 36), seed=0)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(root / "train" / "9.png")
    flags = pix2pix_flags(tmp_path, str(root)) + ["--preprocess", "none", "--serial_batches", "--batch_size", "1"]
    flags[flags.index("--num_threads") + 1] = str(workers)
    assert train_cli.main(flags) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"{root / 'train' / '9.png'}: the A half of this A|B image is 1x2, which --preprocess none rounds to 0x0" \
        in err


@pytest.mark.parametrize("ratio", ["1e-9", "1e9"])
def test_aspect_ratio_extremes_are_one_line_in_inference(tmp_path, aligned_root, ratio, capsys):
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)) == 0
    capsys.readouterr()
    assert test_cli.main(inference_flags(tmp_path, aligned_root) + ["--aspect_ratio", ratio]) == 2
    err = one_line_error(capsys.readouterr().err, "fastp2p.test")
    assert f"--aspect_ratio {float(ratio):g} would stretch the 32x32 results to " in err


class FailingFile:
    """A file whose writes fail once ``limit`` bytes have gone through: with ``failure`` a full disk's OSError, or
    what a second Ctrl-C raises there."""

    def __init__(self, f, limit, failure):
        self.f, self.limit, self.failure, self.written = f, limit, failure, 0

    def write(self, data):
        self.written += len(data)
        if self.written > self.limit:
            self.failure()
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def fail_saves_after(monkeypatch, limit, failure):
    """Every file a checkpoint save stages fails after ``limit`` bytes (past torch.save's first record)."""
    wrap = checkpoint_sets._HashingWriter.__init__
    monkeypatch.setattr(checkpoint_sets._HashingWriter, "__init__",
                        lambda self, f: wrap(self, FailingFile(f, limit, failure)))


def full_disk():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_inside_torch_save_is_the_disk_full_line(tmp_path, aligned_root, monkeypatch, capsys):
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)
    assert train_cli.main(flags) == 0
    folder = tmp_path / "checkpoints" / "p2p"
    before = set_files(folder)
    fail_saves_after(monkeypatch, 100_000, full_disk)
    capsys.readouterr()
    assert train_cli.main(flags + ["--continue_train", "--n_epochs", "2"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"cannot write checkpoint 'latest' into {folder}: No space left on device; the checkpoints already " \
           f"there are kept" in err
    assert set_files(folder) == before and not [name for name in os.listdir(folder) if name.startswith(".tmp_")]


def test_a_second_ctrl_c_inside_the_stops_own_save_is_one_line(tmp_path, aligned_root, monkeypatch, capsys):
    """The first SIGINT asks for a stop after the iteration; the second lands while that stop's save is inside
    torch.save, past its first record, where torch turns what a write raised into its own RuntimeError."""
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)
    assert train_cli.main(flags) == 0
    folder = tmp_path / "checkpoints" / "p2p"
    before = set_files(folder)
    prepare = train_cli.prepare_model

    def stop_at_the_first_step(model, engine):
        step = prepare(model, engine)

        def first_step_asks_for_a_stop(data):
            step(data)
            os.kill(os.getpid(), signal.SIGINT)
        return first_step_asks_for_a_stop

    monkeypatch.setattr(train_cli, "prepare_model", stop_at_the_first_step)
    fail_saves_after(monkeypatch, 100_000, lambda: os.kill(os.getpid(), signal.SIGINT))
    capsys.readouterr()
    assert train_cli.main(flags + ["--continue_train", "--n_epochs", "2"]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastp2p.train: interrupted; every checkpoint set in "), err
    assert set_files(folder) == before


def test_a_read_only_folder_for_the_run_lock_is_one_line(tmp_path, aligned_root, monkeypatch, capsys):
    """A read-only file system (modes do not bind root, so the open is made to fail as it does there)."""
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).endswith(LOCK_NAME):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root)) == 2
    assert f"cannot write the run lock into {tmp_path / 'checkpoints' / 'p2p'}: Read-only file system" in \
        one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("flag", ["--ngf", "--ndf"])
def test_networks_too_large_to_build_are_a_clear_out_of_memory_line(tmp_path, aligned_root, flag, capsys):
    flags = pix2pix_flags(tmp_path, aligned_root)
    flags[flags.index(flag) + 1] = str(10**13)  # the first tensor alone asks for petabytes
    assert train_cli.main(flags) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"with --ngf {flags[flags.index('--ngf') + 1]} and --ndf {flags[flags.index('--ndf') + 1]} do not fit " \
           f"in the memory of cpu" in err and "use smaller --ngf/--ndf" in err


def test_a_fifo_named_like_an_image_never_blocks_the_run(tmp_path):
    """Opening a FIFO blocks until a writer comes, through SIGTERM too; a subprocess, so a hang fails the test."""
    root = tmp_path / "fifo"
    write_images(root / "train", 2, (72, 36), seed=0)
    os.mkfifo(root / "train" / "00.jpg")
    done = subprocess.run([sys.executable, "-m", "fastp2p.train", *pix2pix_flags(tmp_path, str(root))],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert f"{root / 'train' / '00.jpg'} is a FIFO, not an image file" in one_line_error(done.stderr)


# -- item 3: a --save_by_iter run stopped before its first 'latest' -----------------------------------------------

def test_a_save_by_iter_run_stopped_before_its_first_latest_resumes_from_its_furthest_set(tmp_path, aligned_root,
                                                                                         capsys):
    flags = pix2pix_flags(tmp_path, aligned_root, name="whole", epochs=(2, 0)) + [
        "--save_by_iter", "--save_latest_freq", "4", "--save_epoch_freq", "5"]
    assert train_cli.main(flags) == 0  # 'latest' comes at the run's end only: iter_4, iter_8, iter_12 before it
    whole, cut = tmp_path / "checkpoints" / "whole", tmp_path / "checkpoints" / "cut"
    shutil.copytree(whole, cut)
    for name in os.listdir(cut):
        if name.startswith(("latest_", "iter_12_")):
            os.remove(cut / name)  # as a kill between iter_8 and iter_12 leaves the folder
    capsys.readouterr()
    resumed = flags + ["--continue_train"]
    resumed[resumed.index("whole")] = "cut"
    assert train_cli.main(resumed) == 0
    out = capsys.readouterr().out
    assert "'latest' is not a complete checkpoint set (no file of it is there): resuming from 'iter_8'" in out
    for net in ("G", "D"):
        assert_same_weights(weights(whole, net=net), weights(cut, net=net))


# -- item 5: what a user notices -------------------------------------------------------------------------------------

def test_the_run_lock_file_is_removed_when_the_run_ends(tmp_path, aligned_root, capsys):
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)
    assert train_cli.main(flags) == 0
    assert not (tmp_path / "checkpoints" / "p2p" / LOCK_NAME).exists()
    assert train_cli.main(flags + ["--continue_train"]) == 2  # an error exit, nothing to train
    assert not (tmp_path / "checkpoints" / "p2p" / LOCK_NAME).exists()


def test_a_lock_removed_by_its_holder_is_not_taken_by_a_run_that_opened_it_before(tmp_path):
    first = FolderLock(str(tmp_path)).acquire()
    second = FolderLock(str(tmp_path))
    opened_before = second.open()  # the file the first run holds, opened before it is removed
    first.release()
    assert not (tmp_path / LOCK_NAME).exists() and not second.is_current(opened_before)
    os.close(opened_before)
    second.acquire()
    assert second.is_current(second.fd)
    second.release()


def test_the_curves_show_the_last_epoch(tmp_path, aligned_root, monkeypatch):
    """The page's curves are drawn at a display, before that iteration's loss line and the epoch's end line are
    written: the last drawing must come after them, with the last epoch's learning rate and losses."""
    drawings = []
    draw = visualizer_module.draw_chart
    monkeypatch.setattr(visualizer_module, "draw_chart", lambda panels: drawings.append(dict(panels)) or draw(panels))
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root, epochs=(2, 0))) == 0
    last = drawings[-1]
    assert last["learning rate"]["G"][-1][0] == 2
    assert last["losses"]["G_GAN"][-1][0] == 2.0  # iteration 6 of 6 of epoch 2


def test_an_image_that_is_not_an_a_b_pair_is_named_in_a_warning(tmp_path, aligned_root, monkeypatch, capsys):
    from fastp2p.data import datasets

    monkeypatch.setattr(datasets, "_warned_single", False)
    single = os.path.join(aligned_root, "train", "5.jpg")
    Image.open(single).resize((36, 36)).save(single)  # one picture among the A|B pairs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train_cli.main(pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)) == 0
    messages = [str(warning.message) for warning in caught]
    assert any(f"{single} is 36x36, no wider than tall: it looks like one picture, not an A|B pair" in message
               for message in messages), messages
