"""The CLI accepts the reference's flags verbatim, applies its model defaults and rejects bad input."""

import errno
import os

import pytest

from fastp2p import test as test_cli
from fastp2p import train as train_cli
from fastp2p.errors import OptionError
from fastp2p.options import MODELS, build_parser, format_options, parse_options, save_options


def parse(*args, is_train=True):
    return parse_options(list(args), is_train=is_train)


def test_cycle_gan_defaults_match_the_reference():
    opt = parse("--dataroot", ".")
    assert (opt.model, opt.netG, opt.netD, opt.norm, opt.dataset_mode) == (
        "cycle_gan", "resnet_9blocks", "basic", "instance", "unaligned")
    assert (opt.gan_mode, opt.pool_size, opt.no_dropout) == ("lsgan", 50, True)
    assert (opt.lambda_A, opt.lambda_B, opt.lambda_identity) == (10.0, 10.0, 0.5)
    assert (opt.load_size, opt.crop_size, opt.batch_size, opt.lr, opt.beta1) == (286, 256, 1, 0.0002, 0.5)
    assert (opt.n_epochs, opt.n_epochs_decay, opt.save_epoch_freq, opt.save_latest_freq) == (100, 100, 5, 5000)
    assert opt.gpu_ids == (0,) and opt.max_dataset_size == float("inf")


def test_pix2pix_switches_defaults_as_the_reference_does():
    opt = parse("--dataroot", ".", "--model", "pix2pix")
    assert (opt.norm, opt.netG, opt.dataset_mode, opt.pool_size, opt.gan_mode) == (
        "batch", "unet_256", "aligned", 0, "vanilla")
    assert opt.lambda_L1 == 100.0 and opt.no_dropout is False


def test_explicit_flags_override_model_defaults():
    opt = parse("--model", "pix2pix", "--norm", "instance", "--gan_mode", "lsgan", "--lambda_L1", "10")
    assert (opt.norm, opt.gan_mode, opt.lambda_L1) == ("instance", "lsgan", 10.0)


def test_test_options_force_the_reference_settings():
    opt = parse("--model", "test", "--model_suffix", "_A", "--num_threads", "8", is_train=False)
    assert (opt.dataset_mode, opt.load_size, opt.num_threads, opt.batch_size) == ("single", 256, 0, 1)
    assert opt.serial_batches and opt.no_flip and opt.model_suffix == "_A" and opt.phase == "test"


def test_gpu_ids_minus_one_means_cpu():
    assert parse("--gpu_ids", "-1").gpu_ids == ()
    assert parse("--gpu_ids", "0,2").gpu_ids == (0, 2)


def test_suffix_extends_the_name():
    assert parse("--name", "run", "--suffix", "{netG}_bs{batch_size}").name == "run_resnet_9blocks_bs1"


@pytest.mark.parametrize("args, message", [
    (["--no_such_flag"], "unrecognized arguments"),
    (["--model", "cycle_gan", "--lambda_L1", "5"], "unrecognized arguments: --lambda_L1 5 (--lambda_L1 needs "
                                                   "--model pix2pix)"),  # a pix2pix-only flag
    (["--netG", "unet_512"], "invalid choice"),
    (["--batch_size", "0"], "positive integer"),
    (["--batch_size", "two"], "invalid positive_int value"),
    (["--max_dataset_size", "-3"], "must be a number >= 0"),
    (["--crop_size", "300"], "larger than --load_size"),
    (["--model", "pix2pix", "--crop_size", "128", "--load_size", "128"], "unet_256"),
    (["--gpu_ids", "a,b"], "--gpu_ids"),
    (["--gpu_ids", "0,1,0"], "--gpu_ids 0,1,0 lists GPU 0 more than once"),
    (["--dataroot", "/no/such/folder"], "not a folder"),
    (["--model", "test"], "fastp2p.test only"),
    (["--lr", "nan"], "argument --lr: must be a finite number >= 0, got nan"),
    (["--lr", "-1"], "argument --lr: must be a finite number >= 0, got -1"),
    (["--lr", "inf"], "argument --lr: must be a finite number >= 0"),
    (["--lr", "fast"], "argument --lr: invalid finite_non_negative_float value: 'fast'"),
    (["--beta1", "2"], "argument --beta1: must be a number in [0, 1)"),
    (["--beta1", "1"], "argument --beta1: must be a number in [0, 1)"),
    (["--beta1", "-0.1"], "argument --beta1: must be a number in [0, 1)"),
    (["--init_gain", "nan"], "argument --init_gain: must be a finite number >= 0"),
    (["--model", "pix2pix", "--lambda_L1", "inf"], "argument --lambda_L1: must be a finite number >= 0"),
    (["--lambda_A", "-10"], "argument --lambda_A: must be a finite number >= 0"),
    (["--lambda_B", "nan"], "argument --lambda_B: must be a finite number >= 0"),
    (["--lambda_identity", "-0.5"], "argument --lambda_identity: must be a finite number >= 0"),
    (["--suffix", "{nonexistent}"], "--suffix '{nonexistent}' names no option 'nonexistent'"),
    (["--suffix", "bs{batch_size"], "--suffix 'bs{batch_size' is not a format string"),
    (["--suffix", "{0}"], "--suffix '{0}' is not a format string"),
    (["--n_epochs", "0", "--n_epochs_decay", "0"], "nothing to train"),
    (["--n_epochs", "0", "--n_epochs_decay", "0", "--continue_train"], "nothing to train"),
    (["--n_epochs", "2", "--n_epochs_decay", "1", "--epoch_count", "4"], "nothing to train"),
])
def test_bad_flags_are_rejected_with_a_clear_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_options_file_is_written_like_the_reference(tmp_path):
    opt = parse("--model", "pix2pix", "--name", "facades", "--checkpoints_dir", str(tmp_path), "--batch_size", "4")
    save_options(opt)
    text = (tmp_path / "facades" / "train_opt.txt").read_text()
    lines = text.splitlines()
    assert lines[0] == "----------------- Options ---------------"
    assert lines[-1] == "----------------- End -------------------"
    assert "               batch_size: 4                             \t[default: 1]" in lines
    assert any(line.startswith("                     norm: batch") and "[default" not in line for line in lines)
    assert text == format_options(opt) + "\n"


def test_a_write_cut_short_leaves_the_previous_options_file_whole(tmp_path, monkeypatch):
    """A kill while train_opt.txt is written must not leave half a table, from which a resume would take a cut value
    (``resize`` of ``resize_and_crop``): the file is replaced whole or not at all."""
    args = ("--model", "pix2pix", "--name", "facades", "--checkpoints_dir", str(tmp_path))
    save_options(parse(*args, "--batch_size", "4"))
    path = tmp_path / "facades" / "train_opt.txt"
    before = path.read_text()
    real_fdopen = os.fdopen

    class CutShort:
        """A file that takes half of what is written, then stops the process's work as a kill would."""

        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[:len(text) // 2])
            self.f.flush()
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: CutShort(real_fdopen(fd, *a, **k)))
    with pytest.raises(KeyboardInterrupt):
        save_options(parse(*args, "--batch_size", "8"))
    monkeypatch.undo()
    assert path.read_text() == before


def error_line(capsys):
    """The first stderr line, the one that names the problem (a pointer to --help follows it)."""
    return capsys.readouterr().err.splitlines()[0]


@pytest.mark.parametrize("args", [
    ["--lr", "0", "--beta1", "0", "--init_gain", "0"],
    ["--lambda_identity", "0", "--lambda_A", "0.5"],
    ["--model", "pix2pix", "--lambda_L1", "0"],
    ["--n_epochs", "0", "--n_epochs_decay", "1"],
    ["--n_epochs", "2", "--n_epochs_decay", "1", "--epoch_count", "4", "--continue_train"],  # resumes from a state
    ["--name", "..hidden..", "--suffix", "{lr}"],
])
def test_values_at_the_edge_of_each_range_are_accepted(args):
    parse(*args)


@pytest.mark.parametrize("name, suffix", [
    ("../../x", ""), ("/tmp/x", ""), ("runs/a", ""), ("..", ""), (".", ""), ("", ""), ("run", "../x"),
    ("a\0b", ""),
])
@pytest.mark.parametrize("is_train", [True, False])
def test_a_name_that_is_not_one_folder_name_is_rejected(name, suffix, is_train, capsys):
    args = ["--name", name] + (["--suffix", suffix] if suffix else [])
    with pytest.raises(SystemExit) as exit_info:
        parse(*args, is_train=is_train)
    assert exit_info.value.code == 2
    line = error_line(capsys)
    assert line.startswith("fastp2p.") and "--name" in line and "must be one plain folder name" in line
    assert ("(with --suffix applied)" in line) == bool(suffix)


def test_an_os_separator_in_the_name_is_rejected(monkeypatch, capsys):
    """The separator of the OS the run is on (Windows' backslash), not only '/'."""
    monkeypatch.setattr(os, "sep", "\\")
    with pytest.raises(SystemExit):
        parse("--name", "..\\x")
    assert "must be one plain folder name" in error_line(capsys)


def test_an_unwritable_checkpoints_dir_is_one_line_naming_it(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    assert train_cli.main(["--name", "run", "--checkpoints_dir", str(not_a_folder), "--gpu_ids", "-1"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastp2p.train: error: "), lines
    assert f"{not_a_folder / 'run'}: Not a directory" in lines[0]


def test_a_read_only_checkpoints_dir_is_an_option_error_with_the_os_reason(tmp_path, monkeypatch):
    opt = parse("--name", "run", "--checkpoints_dir", str(tmp_path / "ro"))

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(os, "makedirs", read_only)
    with pytest.raises(OptionError, match=r"^--checkpoints_dir .*ro: cannot write to .*run: Read-only file system$"):
        save_options(opt)


def test_an_unwritable_results_dir_stops_the_test_script_in_one_line(tmp_path, capsys):
    dataroot = tmp_path / "images"
    dataroot.mkdir()
    not_a_folder = tmp_path / "results"
    not_a_folder.write_text("")
    argv = ["--model", "test", "--name", "run", "--dataroot", str(dataroot), "--gpu_ids", "-1",
            "--checkpoints_dir", str(tmp_path / "checkpoints"), "--results_dir", str(not_a_folder)]
    assert test_cli.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"fastp2p.test: error: --results_dir {not_a_folder}: cannot write to {not_a_folder / 'run'}: Not a directory"]


def test_aspect_ratio_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        parse("--aspect_ratio", "0", is_train=False)
    assert "argument --aspect_ratio: must be a finite number > 0, got 0" in error_line(capsys)


def group_of(parser, flag):
    """The title of the help section that lists ``flag``."""
    return next(group.title for group in parser._action_groups
                if any(flag in action.option_strings for action in group._group_actions))


@pytest.mark.parametrize("is_train", [True, False])
def test_wandb_flags_are_monitoring_flags_not_compatibility_ones(is_train):
    opt = parse("--use_wandb", "--wandb_project_name", "runs", is_train=is_train)
    assert opt.use_wandb and opt.wandb_project_name == "runs"
    parser = build_parser(is_train, opt.model)
    assert {group_of(parser, flag) for flag in ("--use_wandb", "--wandb_project_name")} == {"monitoring (fastp2p)"}


def test_eval_freq_is_a_training_monitoring_flag_off_by_default(capsys):
    parser = build_parser(True, "cycle_gan")
    assert parse().eval_freq == 0 and parse("--eval_freq", "5").eval_freq == 5
    assert group_of(parser, "--eval_freq") == group_of(parser, "--no_tensorboard") == "monitoring (fastp2p)"
    with pytest.raises(SystemExit):
        parse("--eval_freq", "-1")
    assert "argument --eval_freq: must be >= 0, got -1" in error_line(capsys)
    with pytest.raises(SystemExit):
        parse("--eval_freq", "5", is_train=False)


PARSERS = [(is_train, model) for is_train in (True, False) for model in MODELS if not (is_train and model == "test")]


@pytest.mark.parametrize("is_train, model", PARSERS)
def test_every_flag_has_a_help_text_and_shows_its_default(is_train, model, capsys):
    parser = build_parser(is_train, model)
    assert [action.dest for action in parser._actions if not (action.help or "").strip()] == []
    with pytest.raises(SystemExit) as exit_info:
        parse("--model", model, "--help", is_train=is_train)
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.count("(default:") == len(parser._actions) - 1  # all but --help itself


@pytest.mark.parametrize("is_train, model, flags", [
    (True, "pix2pix", ["--lambda_L1"]),
    (True, "cycle_gan", ["--lambda_A", "--lambda_B", "--lambda_identity"]),
    (False, "test", ["--model_suffix"]),
])
def test_help_with_a_model_lists_its_flags(is_train, model, flags, capsys):
    with pytest.raises(SystemExit):
        parse("--model", model, "--help", is_train=is_train)
    out = capsys.readouterr().out
    assert f"--model {model}:" in out and all(flag in out for flag in flags)
    assert "(default: 100.0)" in out if model == "pix2pix" else "--lambda_L1" not in out


@pytest.mark.parametrize("is_train", [True, False])
def test_help_without_a_model_points_to_the_model_help(is_train, capsys):
    with pytest.raises(SystemExit):
        parse("--help", is_train=is_train)
    assert "--model X --help lists model X's own flags" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("args, is_train, message", [
    (["--model", "pix2pix", "--lamda_L1", "5"], True,
     "unrecognized arguments: --lamda_L1 5 (did you mean --lambda_L1?)"),
    (["--lamda_L1", "5"], True, "(did you mean --model pix2pix --lambda_L1?)"),
    (["--bach_size=2", "--lambda_L1", "1"], True,
     "unrecognized arguments: --bach_size=2 --lambda_L1 1 (--lambda_L1 needs --model pix2pix; did you mean "
     "--batch_size for --bach_size?)"),
    (["--num_tests", "5"], False, "unrecognized arguments: --num_tests 5 (did you mean --num_test?)"),
    (["--netG", "resnet9"], True, "argument --netG: invalid choice: 'resnet9' (choose from 'resnet_9blocks', "),
    (["--netG", "resnet9"], True, "(did you mean resnet_9blocks?)"),
    (["--norm", "instanc"], False, "(did you mean instance?)"),
    (["--xyzzy"], True, "unrecognized arguments: --xyzzy\n"),
])
def test_a_misspelled_flag_or_choice_gets_a_guess(args, is_train, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*args, is_train=is_train)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, is_train", [
    (["--lamda_L1", "5"], True), (["--netG", "resnet9"], True), (["--lr", "fast"], True),
    (["--crop_size", "300"], True), (["--model", "test"], True), (["--num_tests", "5"], False),
])
def test_an_error_is_short_and_comes_first(args, is_train, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*args, is_train=is_train)
    assert exit_info.value.code == 2
    prog = "fastp2p.train" if is_train else "fastp2p.test"
    first, *rest = capsys.readouterr().err.splitlines()
    assert first.startswith(f"{prog}: error: ") and rest == ["run with --help to list every flag and its default"]
