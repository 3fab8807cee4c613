"""End to end through the CLI: train, checkpoint, resume exactly, run inference; bad input fails cleanly."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastp2p import test as test_cli
from fastp2p import train as train_cli
from fastp2p.checkpoint import read_checkpoint

LOSS_LINE = re.compile(r"^\(epoch: \d+, iters: \d+, time: \d+\.\d{3}, data: \d+\.\d{3}\) (\w+: -?\d+\.\d{3} )+$")


def write_images(folder, count, size, seed):
    """Smooth random colour fields, saved as JPEG (the format of the real datasets)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    w, h = size
    for i in range(count):
        low = rng.randint(0, 255, (4, 4, 3)).astype(np.uint8)
        Image.fromarray(low).resize((w, h), Image.BILINEAR).save(os.path.join(folder, f"{i}.jpg"), quality=95)


@pytest.fixture
def aligned_root(tmp_path):
    root = tmp_path / "aligned"
    write_images(root / "train", 6, (72, 36), seed=0)
    write_images(root / "test", 2, (72, 36), seed=1)
    return str(root)


@pytest.fixture
def unaligned_root(tmp_path):
    root = tmp_path / "unaligned"
    for split, seed in (("trainA", 0), ("trainB", 1), ("testA", 2), ("testB", 3)):
        write_images(root / split, 4 if split.startswith("train") else 2, (36, 36), seed)
    return str(root)


def small_net_flags(tmp_path, name):
    return ["--name", name, "--checkpoints_dir", str(tmp_path / "checkpoints"), "--gpu_ids", "-1",
            "--num_threads", "0", "--ngf", "8", "--ndf", "8", "--netG", "resnet_6blocks",
            "--load_size", "36", "--crop_size", "32", "--no_tensorboard"]


def pix2pix_flags(tmp_path, dataroot, name="p2p", epochs=(1, 1)):
    return ["--model", "pix2pix", "--dataroot", dataroot, *small_net_flags(tmp_path, name), "--seed", "3",
            "--n_epochs", str(epochs[0]), "--n_epochs_decay", str(epochs[1]), "--print_freq", "2",
            "--display_freq", "2", "--update_html_freq", "2", "--save_epoch_freq", "1"]


def cycle_gan_flags(tmp_path, dataroot, name="cyc"):
    return ["--model", "cycle_gan", "--dataroot", dataroot, *small_net_flags(tmp_path, name), "--seed", "5",
            "--n_epochs", "1", "--n_epochs_decay", "1", "--print_freq", "2", "--pool_size", "3",
            "--save_epoch_freq", "1"]


def state_dict_of(path):
    return read_checkpoint(str(path))


def assert_same_weights(path_a, path_b):
    a, b = state_dict_of(path_a), state_dict_of(path_b)
    assert list(a) == list(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_pix2pix_trains_saves_and_tests(tmp_path, aligned_root, capsys):
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root)) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "checkpoints" / "p2p"
    for prefix in ("latest", "1", "2"):
        for net in ("G", "D"):
            assert (folder / f"{prefix}_net_{net}.pth").is_file()
    assert (folder / "latest_train_state.pth").is_file()
    assert "[Network G] Total number of parameters" in out and "learning rate 0.0002000 -> " in out
    log_lines = (folder / "loss_log.txt").read_text().splitlines()
    assert log_lines[0].startswith("================ Training Loss (")
    loss_lines = [line for line in log_lines if line.startswith("(epoch")]
    assert loss_lines and all(LOSS_LINE.match(line) for line in loss_lines), loss_lines
    assert all(name in loss_lines[0] for name in ("G_GAN:", "G_L1:", "D_real:", "D_fake:"))
    assert re.search(r"^ +seed: 3 ", (folder / "train_opt.txt").read_text(), re.M)
    assert (folder / "web" / "index.html").is_file()
    keys = list(state_dict_of(folder / "latest_net_G.pth"))
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in keys)

    results = tmp_path / "results"
    assert test_cli.main(["--model", "pix2pix", "--dataroot", aligned_root, "--results_dir", str(results),
                          *small_net_flags(tmp_path, "p2p")[:-5], "--load_size", "32", "--crop_size", "32"]) == 0
    page = results / "p2p" / "test_latest"
    html = (page / "index.html").read_text()
    for visual in ("real_A", "fake_B", "real_B"):
        assert (page / "images" / f"0_{visual}.png").is_file()
        assert f"0_{visual}.png" in html


def test_cycle_gan_trains_and_test_model_loads_one_direction(tmp_path, unaligned_root, capsys):
    assert train_cli.main(cycle_gan_flags(tmp_path, unaligned_root)) == 0
    folder = tmp_path / "checkpoints" / "cyc"
    for net in ("G_A", "G_B", "D_A", "D_B"):
        assert (folder / f"latest_net_{net}.pth").is_file()
    loss_line = next(line for line in (folder / "loss_log.txt").read_text().splitlines() if line.startswith("(epoch"))
    for name in ("D_A", "G_A", "cycle_A", "idt_A", "D_B", "G_B", "cycle_B", "idt_B"):
        assert f" {name}: " in loss_line
    results = tmp_path / "results"
    flags = small_net_flags(tmp_path, "cyc")[:-5] + ["--load_size", "32", "--crop_size", "32"]
    assert test_cli.main(["--model", "test", "--dataroot", os.path.join(unaligned_root, "testA"),
                          "--model_suffix", "_A", "--no_dropout", "--results_dir", str(results), *flags]) == 0
    images = sorted(os.listdir(results / "cyc" / "test_latest" / "images"))
    assert images == ["0_fake.png", "0_real.png", "1_fake.png", "1_real.png"]


def test_interrupted_run_resumes_exactly(tmp_path, aligned_root, monkeypatch):
    """Stopped mid-epoch (as by Ctrl-C) and continued, a run ends with the same weights as one never stopped."""
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root, name="straight", epochs=(2, 1))) == 0

    original = train_cli.Trainer.train_epoch
    calls = {"iterations": 0}

    def stop_in_epoch_two(trainer):
        if calls["iterations"]:
            return original(trainer)
        model_step = trainer.train_step

        def counted_step(batch):
            model_step(batch)
            calls["iterations"] += 1
            if calls["iterations"] == 8:  # epoch 2, third batch of six
                trainer.request_stop()

        trainer.train_step = counted_step
        return original(trainer)

    monkeypatch.setattr(train_cli.Trainer, "train_epoch", stop_in_epoch_two)
    flags = pix2pix_flags(tmp_path, aligned_root, name="resumed", epochs=(2, 1))
    assert train_cli.main(flags) == 130
    state = read_checkpoint(str(tmp_path / "checkpoints" / "resumed" / "latest_train_state.pth"))
    assert (state["epoch"], state["epoch_iter"], state["total_iters"]) == (2, 2, 8)
    monkeypatch.setattr(train_cli.Trainer, "train_epoch", original)
    assert train_cli.main(flags + ["--continue_train"]) == 0
    for net in ("G", "D"):
        assert_same_weights(tmp_path / "checkpoints" / "straight" / f"latest_net_{net}.pth",
                            tmp_path / "checkpoints" / "resumed" / f"latest_net_{net}.pth")


@pytest.mark.slow
def test_python_dash_m_entry_point(tmp_path, unaligned_root):
    flags = cycle_gan_flags(tmp_path, unaligned_root, name="cli")
    flags[flags.index("--n_epochs_decay") + 1] = "0"
    result = subprocess.run([sys.executable, "-m", "fastp2p.train", *flags], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "checkpoints" / "cli" / "latest_net_G_A.pth").is_file()


def run_expecting_error(capsys, argv):
    assert train_cli.main(argv) == 2
    return capsys.readouterr().err


def test_empty_dataroot_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    err = run_expecting_error(capsys, pix2pix_flags(tmp_path, str(empty)))
    assert "fastp2p.train: error:" in err and "Traceback" not in err


def test_aligned_mode_on_an_unaligned_folder_names_the_fix(tmp_path, unaligned_root, capsys):
    err = run_expecting_error(capsys, pix2pix_flags(tmp_path, unaligned_root))
    assert "unaligned" in err


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, aligned_root, capsys):
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root, name="arch", epochs=(1, 0))) == 0
    flags = pix2pix_flags(tmp_path, aligned_root, name="arch", epochs=(1, 0)) + ["--continue_train"]
    flags[flags.index("resnet_6blocks")] = "resnet_9blocks"
    before = (tmp_path / "checkpoints" / "arch" / "latest_net_G.pth").read_bytes()
    with pytest.raises(SystemExit) as stop:  # refused by the run's train_opt.txt as the flags parse
        train_cli.main(flags)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--netG resnet_9blocks conflicts" in err and "trained with --netG resnet_6blocks" in err
    (tmp_path / "checkpoints" / "arch" / "train_opt.txt").unlink()  # without it, the checkpoint tells
    err = run_expecting_error(capsys, flags)
    assert "does not match the network" in err and "give --netG resnet_6blocks" in err
    assert (tmp_path / "checkpoints" / "arch" / "latest_net_G.pth").read_bytes() == before


def test_nan_losses_stop_the_run_without_overwriting_checkpoints(tmp_path, aligned_root, capsys):
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root, name="nan", epochs=(1, 0))) == 0
    before = (tmp_path / "checkpoints" / "nan" / "latest_net_G.pth").read_bytes()
    flags = pix2pix_flags(tmp_path, aligned_root, name="nan", epochs=(1, 0)) + ["--lr", "1e38"]
    err = run_expecting_error(capsys, flags)
    assert "not finite" in err
    assert (tmp_path / "checkpoints" / "nan" / "latest_net_G.pth").read_bytes() == before


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_and_stops(tmp_path, aligned_root):
    """As `timeout` or a job scheduler would stop a run: the signal reaches the loader's workers too."""
    import signal
    import time

    flags = pix2pix_flags(tmp_path, aligned_root, name="term", epochs=(50, 0))
    flags[flags.index("--num_threads") + 1] = "2"
    process = subprocess.Popen([sys.executable, "-m", "fastp2p.train", *flags], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = tmp_path / "checkpoints" / "term" / "loss_log.txt"
    deadline = time.monotonic() + 120
    while not (log.is_file() and "(epoch" in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output
    assert "stopped; resume with --continue_train" in output
    assert (tmp_path / "checkpoints" / "term" / "latest_train_state.pth").is_file()


def test_image_size_the_generator_cannot_take_names_the_options(tmp_path, capsys):
    root = tmp_path / "odd"
    write_images(root / "train", 2, (128, 64), seed=4)  # A|B halves of 64x64, which unet_128 halves 7 times
    flags = pix2pix_flags(tmp_path, str(root)) + ["--preprocess", "none", "--netG", "unet_128"]
    err = run_expecting_error(capsys, flags)
    assert "0.jpg: images reach the networks as 64x64 (after --preprocess none)" in err, err
    assert "--netG unet_128 needs a height and width that are multiples of 128" in err, err
    assert not (tmp_path / "checkpoints" / "p2p" / "latest_net_G.pth").exists()
