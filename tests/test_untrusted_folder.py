"""A checkpoint folder from elsewhere is untrusted input (issue 29, item 1): links planted in it are never written
through, names given on the command line cannot leave the folder they belong in, damaged network files are called
corrupt in one line, and weights that are not finite are refused when they are loaded."""

import contextlib
import os
import signal

import pytest
import torch

from fastp2p import test as test_cli
from fastp2p import train as train_cli
from fastp2p.checkpoint import read_checkpoint
from fastp2p.checkpoint_sets import recover_folder
from fastp2p.errors import CheckpointError, OutputError
from fastp2p.output_files import open_output
from tests.test_train_cli import (
    aligned_root,  # noqa: F401 (a fixture used by name)
    pix2pix_flags,
)

ONE_EPOCH = (1, 0)


def one_line_error(err, command="fastp2p.train"):
    assert err.startswith(f"{command}: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def inference_flags(tmp_path, dataroot, name="p2p"):
    """fastp2p.test's flags for the run pix2pix_flags trains."""
    flags = pix2pix_flags(tmp_path, dataroot, name=name)
    cut = flags.index("--seed")
    return [flag for flag in flags[:cut] if flag != "--no_tensorboard"] + ["--results_dir", str(tmp_path / "results")]


@pytest.fixture
def precious(tmp_path):
    """A file outside the run's folder that a planted link points at."""
    path = tmp_path / "precious.txt"
    path.write_text("precious\n")
    return path


@pytest.mark.parametrize("planted", ["train_opt.txt", "loss_log.txt", ".fastp2p_run.lock", "web/index.html.tmp",
                                     "web/curves.tmp.png", "web/images/epoch001_real_A.png", "metrics.csv"])
def test_a_link_planted_in_the_run_folder_is_refused_not_written_through(tmp_path, aligned_root, precious, planted,
                                                                         capsys):
    folder = tmp_path / "checkpoints" / "p2p"
    (folder / planted).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(precious, folder / planted)
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)
    if planted == "metrics.csv":
        flags += ["--eval_freq", "1"]
    assert train_cli.main(flags) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"refusing to write {folder / planted}: it is a symbolic link to {precious}" in err
    assert precious.read_text() == "precious\n"


def test_a_web_folder_that_is_a_link_is_refused(tmp_path, aligned_root, capsys):
    folder, elsewhere = tmp_path / "checkpoints" / "p2p", tmp_path / "elsewhere"
    folder.mkdir(parents=True)
    elsewhere.mkdir()
    os.symlink(elsewhere, folder / "web")
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)) == 2
    assert f"refusing to write {folder / 'web'}: it is a symbolic link" in one_line_error(capsys.readouterr().err)
    assert os.listdir(elsewhere) == []


@pytest.mark.parametrize("planted", ["checkpoints/p2p/test_opt.txt", "results/p2p/test_latest/images/0_fake_B.png"])
def test_inference_writes_no_file_through_a_planted_link(tmp_path, aligned_root, precious, planted, capsys):
    assert train_cli.main(pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)) == 0
    (tmp_path / planted).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(precious, tmp_path / planted)
    capsys.readouterr()
    assert test_cli.main(inference_flags(tmp_path, aligned_root)) == 2
    assert "it is a symbolic link" in one_line_error(capsys.readouterr().err, "fastp2p.test")
    assert precious.read_text() == "precious\n"


@contextlib.contextmanager
def failing_if_blocked(seconds=20):
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("opening a FIFO blocked"))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_a_fifo_where_a_file_is_written_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "loss_log.txt"
    os.mkfifo(fifo)
    with failing_if_blocked(), pytest.raises(OutputError, match=f"refusing to write {fifo}: it is a FIFO"):
        open_output(str(fifo), "a")


def test_a_fifo_named_like_a_journal_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / ".commit_0123456789ab.json"
    os.mkfifo(fifo)
    with failing_if_blocked(), pytest.raises(CheckpointError, match="it is not a plain file"):
        recover_folder(str(tmp_path))


# -- names given on the command line that become parts of paths ----------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--epoch", "../../x"), ("--epoch", ""), ("--phase", "../../x"),
                                         ("--phase", ""), ("--phase", ".."), ("--suffix", "{dataroot}")])
def test_inference_names_cannot_leave_their_folder(tmp_path, aligned_root, flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        test_cli.main(inference_flags(tmp_path, aligned_root) + [flag, value])
    assert stop.value.code == 2
    assert f"{flag if flag != '--suffix' else '--name'} " in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["aligned"]  # nothing written anywhere: no x_opt.txt, no results/


def test_a_model_suffix_cannot_leave_the_run_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        test_cli.main(["--model", "test", "--model_suffix", "/../../x", "--checkpoints_dir", str(tmp_path)])
    assert stop.value.code == 2 and "--model_suffix '/../../x' cannot hold '/'" in capsys.readouterr().err


def test_an_empty_phase_is_refused_rather_than_training_on_every_split(tmp_path, aligned_root, capsys):
    with pytest.raises(SystemExit) as stop:
        train_cli.main(pix2pix_flags(tmp_path, aligned_root) + ["--phase", ""])
    assert stop.value.code == 2 and "--phase '' must be one plain folder name" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


# -- damaged network files ------------------------------------------------------------------------------------------

def truncated(path, legacy):
    torch.save({"w": torch.zeros(1000)}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, expected", [
    (lambda path: path.write_bytes(b""), "the file is empty (0 bytes)"),
    (lambda path: truncated(path, legacy=False), "it is truncated or corrupt (RuntimeError: PytorchStreamReader"),
    (lambda path: truncated(path, legacy=True), "it is truncated or corrupt (RuntimeError: unexpected EOF"),
    (lambda path: path.write_bytes(os.urandom(4096)), "it is truncated or corrupt ("),
])
def test_a_damaged_network_file_is_called_corrupt_in_one_line(tmp_path, damage, expected):
    path = tmp_path / "latest_net_G.pth"
    damage(path)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(str(path))
    message = str(error.value)
    assert message.startswith(f"cannot read checkpoint {path}: {expected}") and "\n" not in message, message
    assert "run code" not in message


def test_random_bytes_are_never_called_an_attack(tmp_path):
    path = tmp_path / "latest_net_G.pth"
    for seed in range(40):
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.uint8).numpy().tobytes())
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            read_checkpoint(str(path))


def test_an_empty_network_file_stops_a_weights_only_resume_in_one_line(tmp_path, aligned_root, capsys):
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)
    assert train_cli.main(flags) == 0
    folder = tmp_path / "checkpoints" / "p2p"
    (folder / "latest_train_state.pth").unlink()  # the weights alone, as the reference leaves them
    (folder / "latest_net_G.pth").write_bytes(b"")
    capsys.readouterr()
    assert train_cli.main(flags + ["--continue_train", "--n_epochs", "2"]) == 2
    assert f"cannot read checkpoint {folder / 'latest_net_G.pth'}: the file is empty" in \
        one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused_when_a_resume_loads_them(tmp_path, aligned_root, value, capsys):
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)
    assert train_cli.main(flags) == 0
    folder = tmp_path / "checkpoints" / "p2p"
    (folder / "latest_train_state.pth").unlink()
    path = folder / "latest_net_D.pth"
    state = read_checkpoint(str(path))
    next(tensor for tensor in state.values() if tensor.is_floating_point()).view(-1)[0] = value
    torch.save(state, path)
    log_before = (folder / "loss_log.txt").read_text()
    capsys.readouterr()
    assert train_cli.main(flags + ["--continue_train", "--n_epochs", "2"]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"the weights of D in {path} are not finite" in err
    assert (folder / "loss_log.txt").read_text().count("(epoch") == log_before.count("(epoch")  # nothing trained


def spoil_epoch(state):
    state["epoch"] = "x"


def spoil_schedulers(state):
    del state["model"]["schedulers"]


def spoil_optimizer(state):
    state["model"]["optimizers"][0]["param_groups"] = []


def spoil_rng(state):
    state["rng"] = [{"python": (3, 4), "torch": torch.zeros(3, dtype=torch.uint8)}]


@pytest.mark.parametrize("spoil, expected", [
    (spoil_epoch, "its training state has values of a layout fastp2p never writes (epoch)"),
    (spoil_schedulers, "its training state has values of a layout fastp2p never writes (model)"),
    (spoil_optimizer, "its optimizer, pool or RNG states do not fit this run (ValueError: "),
    (spoil_rng, "its optimizer, pool or RNG states do not fit this run (ValueError: "),
])
def test_a_training_state_of_another_layout_is_one_line(tmp_path, aligned_root, spoil, expected, capsys):
    flags = pix2pix_flags(tmp_path, aligned_root, epochs=ONE_EPOCH)
    assert train_cli.main(flags) == 0
    path = tmp_path / "checkpoints" / "p2p" / "latest_train_state.pth"
    state = read_checkpoint(str(path))
    spoil(state)
    torch.save(state, path)
    capsys.readouterr()
    assert train_cli.main(flags + ["--continue_train", "--n_epochs", "2"]) == 2
    assert expected in one_line_error(capsys.readouterr().err)
