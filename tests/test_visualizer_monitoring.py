"""What a run shows beyond the console: the web page's curve image, wandb (a stand-in module), --eval_freq's
metrics.csv, and that scoring between epochs leaves the training run exactly as it would be without it."""

import argparse
import csv
import functools
import sys
import types

from fastp2p import metrics
from fastp2p import train as train_cli
from fastp2p.options import parse_options
from fastp2p.visualizer import CURVES_IMAGE, WANDB_RUN_ID, LossHistory, Visualizer
from tests.test_metrics import TinyFeatures
from tests.test_outputs import visuals
from tests.test_train_cli import aligned_root, unaligned_root  # noqa: F401 (pytest fixtures)
from tests.test_train_cli import assert_same_weights, cycle_gan_flags, pix2pix_flags


def test_loss_history_reads_appended_lines_and_a_resume_replaces_the_redone_tail(tmp_path):
    log = tmp_path / "loss_log.txt"
    log.write_text("(epoch: 1, iters: 2, time: 0.1, data: 0.0) G: 3.000 D: 1.000 \n"
                   "(epoch: 1, iters: 4, time: 0.1, data: 0.0) G: 2.000 D: 1.500 \n"
                   "End of epoch 1 / 2 \t Time Taken: 1 sec \t 9.0 img/s, data wait 1.0%, lr G=0.0002000 D=0.0001000\n"
                   "(epoch: 2, iters: 2, time: 0.1, data: 0.0) G: 1.000 D: 2.000 \n")
    history = LossHistory(str(log), epoch_images=4).read()
    assert history.losses["G"] == [(0.5, 3.0), (1.0, 2.0), (1.5, 1.0)]
    assert history.learning_rates == {"G": [(1, 0.0002)], "D": [(1, 0.0001)]}
    with open(log, "a") as f:  # a resume from the end of epoch 1 redoes epoch 2; a line being written waits
        f.write("================ Training Loss (now) ================\n"
                "(epoch: 2, iters: 2, time: 0.1, data: 0.0) G: 0.500 D: 2.500 \n(epoch: 2, iters: 4, ti")
    assert history.read().losses["G"] == [(0.5, 3.0), (1.0, 2.0), (1.5, 0.5)]
    with open(log, "a") as f:
        f.write("me: 0.1, data: 0.0) G: 0.250 D: 2.500 \n")
    assert history.read().losses["G"][-1] == (2.0, 0.25)


def test_the_curve_image_is_redrawn_when_the_log_grows(tmp_path):
    opt = argparse.Namespace(checkpoints_dir=str(tmp_path), name="run", no_tensorboard=True, no_html=False,
                             display_winsize=64, use_wandb=False, batch_size=2, n_epochs=2, n_epochs_decay=0)
    visualizer = Visualizer(opt, batches_per_epoch=2)
    visualizer.print_current_losses(1, 2, {"G_GAN": 1.0, "G_L1": 30.0}, 0.1, 0.0)
    visualizer.print_current_losses(1, 4, {"G_GAN": 0.8, "G_L1": 25.0}, 0.1, 0.0)
    visualizer.log_epoch_end(1, 2, {"elapsed_s": 3.0, "images_per_s": 1.5, "data_wait_share": 0.1},
                             {"G": 0.0002, "D": 0.0001})
    assert visualizer.history.read().learning_rates == {"G": [(1, 0.0002)], "D": [(1, 0.0001)]}
    visualizer.reset()
    visualizer.display_current_results(visuals(0.0), 1, 4, save_result=False)
    curves = tmp_path / "run" / "web" / CURVES_IMAGE
    first = curves.read_bytes()
    assert f'<img src="{CURVES_IMAGE}">' in (tmp_path / "run" / "web" / "index.html").read_text()
    visualizer.print_current_losses(2, 2, {"G_GAN": 0.5, "G_L1": 10.0}, 0.1, 0.0)
    visualizer.reset()
    visualizer.display_current_results(visuals(0.0), 2, 6, save_result=False)
    assert curves.read_bytes() != first
    visualizer.close()


class FakeWandb(types.ModuleType):
    """The calls a run makes to wandb, recorded."""

    def __init__(self):
        super().__init__("wandb")
        self.calls = []

    id = "run-1"

    def init(self, **kwargs):
        self.calls.append(("init", kwargs))
        return self

    def log(self, values, step):
        self.calls.append(("log", dict(values), step))

    def finish(self):
        self.calls.append(("finish",))


def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    wandb = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    opt = parse_options(["--checkpoints_dir", str(tmp_path), "--name", "run", "--no_tensorboard", "--no_html",
                         "--use_wandb", "--wandb_project_name", "proj", "--batch_size", "2", "--n_epochs", "2",
                         "--n_epochs_decay", "0"])
    Visualizer(opt).close()
    assert (tmp_path / "run" / WANDB_RUN_ID).read_text() == "run-1"
    Visualizer(opt.replace(continue_train=True)).close()
    inits = [call[1] for call in wandb.calls if call[0] == "init"]
    assert "id" not in inits[0] and (inits[1]["id"], inits[1]["resume"]) == ("run-1", "allow")


def test_eval_freq_and_wandb_leave_the_training_run_exact(tmp_path, aligned_root, monkeypatch):
    """pix2pix with BatchNorm and dropout: the scoring draws dropout masks and normalizes by batch statistics, so
    without its forked RNG and restored buffers the checkpoints would differ."""
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=(2, 0)) + ["--norm", "batch", "--display_freq", "100"]
    assert train_cli.main(flags) == 0
    wandb = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setattr(train_cli, "FeatureDistances", functools.partial(metrics.FeatureDistances,
                                                                         feature=TinyFeatures()))
    scored = pix2pix_flags(tmp_path, aligned_root, name="scored", epochs=(2, 0)) + [
        "--norm", "batch", "--display_freq", "100", "--eval_freq", "1", "--use_wandb",
        "--wandb_project_name", "proj"]
    assert train_cli.main(scored) == 0
    for net in ("G", "D"):
        assert_same_weights(tmp_path / "checkpoints" / "p2p" / f"latest_net_{net}.pth",
                            tmp_path / "checkpoints" / "scored" / f"latest_net_{net}.pth")
    with open(tmp_path / "checkpoints" / "scored" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["epoch"], row["iteration"]) for row in rows] == [("1", "6"), ("2", "12")]
    assert set(rows[0]) == {"epoch", "iteration", "l1", "psnr", "ssim", "fid", "kid"}
    assert all(0 < float(row["ssim"]) < 1 and float(row["psnr"]) > 0 and float(row["fid"]) >= 0 for row in rows)
    kind, init = wandb.calls[0]
    assert kind == "init" and (init["project"], init["name"]) == ("proj", "scored")
    logged = {key for call in wandb.calls if call[0] == "log" for key in call[1]}
    assert {"loss/G_L1", "lr/G", "lr/D", "speed/images_per_s", "speed/data_wait_share", "metrics/psnr",
            "metrics/fid"} <= logged
    assert wandb.calls[-1] == ("finish",)
    page = (tmp_path / "checkpoints" / "scored" / "web" / "index.html").read_text()
    assert "<th>psnr</th>" in page


def test_use_wandb_without_wandb_stops_before_training(tmp_path, aligned_root, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root) + ["--use_wandb"]) == 2
    err = capsys.readouterr().err
    assert err == "fastp2p.train: error: --use_wandb needs the wandb package: pip install 'fastp2p[wandb]'\n"
    assert not (tmp_path / "checkpoints").exists()


def test_unpaired_data_is_scored_on_fid_and_kid_alone(tmp_path, unaligned_root, monkeypatch, capsys):
    """CycleGAN's G_A on testA against the testB images; without FID/KID there is nothing to score: an error before
    training."""
    flags = cycle_gan_flags(tmp_path, unaligned_root) + ["--eval_freq", "1", "--n_epochs_decay", "0"]
    assert train_cli.main(flags) == 2  # torch-fidelity's Inception is not installed in the tests
    assert "--eval_freq on unpaired data scores FID and KID alone" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints" / "cyc" / "latest_net_G_A.pth").exists()
    monkeypatch.setattr(train_cli, "FeatureDistances", functools.partial(metrics.FeatureDistances,
                                                                         feature=TinyFeatures()))
    assert train_cli.main(flags) == 0
    with open(tmp_path / "checkpoints" / "cyc" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [list(row) for row in rows] == [["epoch", "iteration", "fid", "kid"]]
    assert "metrics of epoch 1 on the test split: fid " in capsys.readouterr().out
