"""The CLI accepts the reference's flags verbatim, applies its model defaults and rejects bad input."""

import pytest

from fastp2p.options import format_options, parse_options, save_options


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
    assert opt.gpu_ids == [0] and opt.max_dataset_size == float("inf")


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
    assert parse("--gpu_ids", "-1").gpu_ids == []
    assert parse("--gpu_ids", "0,2").gpu_ids == [0, 2]


def test_suffix_extends_the_name():
    assert parse("--name", "run", "--suffix", "{netG}_bs{batch_size}").name == "run_resnet_9blocks_bs1"


@pytest.mark.parametrize("args, message", [
    (["--no_such_flag"], "unrecognized arguments"),
    (["--model", "cycle_gan", "--lambda_L1", "5"], "unrecognized arguments"),  # a pix2pix-only flag
    (["--netG", "unet_512"], "invalid choice"),
    (["--batch_size", "0"], "positive integer"),
    (["--batch_size", "two"], "invalid positive_int value"),
    (["--max_dataset_size", "-3"], "must be a number >= 0"),
    (["--crop_size", "300"], "larger than --load_size"),
    (["--model", "pix2pix", "--crop_size", "128", "--load_size", "128"], "unet_256"),
    (["--gpu_ids", "a,b"], "--gpu_ids"),
    (["--dataroot", "/no/such/folder"], "not a folder"),
    (["--model", "test"], "fastp2p.test only"),
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
