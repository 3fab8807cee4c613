"""--continue_train and fastp2p.test take the network and data flags from the run's train_opt.txt: a resume or a test
needs only --name; a flag given wins, an architecture flag given with another value is one line naming both; a
checkpoint that still does not load names the flag that differs; --model test on a CycleGAN run names the suffixes.
"""

import os

import pytest
import torch
from PIL import Image

from fastp2p import test as test_cli
from fastp2p import train as train_cli
from fastp2p.checkpoint import load_network
from fastp2p.errors import CheckpointError
from fastp2p.networks import define_D, define_G
from fastp2p.options import format_options, parse_options

TRAINED = ["--model", "pix2pix", "--netG", "resnet_6blocks", "--ngf", "4", "--ndf", "4", "--netD", "n_layers",
           "--n_layers_D", "2", "--no_dropout", "--load_size", "36", "--crop_size", "32", "--direction", "BtoA",
           "--max_dataset_size", "2", "--gpu_ids", "-1", "--num_threads", "0", "--no_tensorboard"]


def run_folder(tmp_path, argv, name="run"):
    """checkpoints/NAME with the train_opt.txt that a training run of ``argv`` writes; the checkpoints folder."""
    checkpoints = tmp_path / "checkpoints"
    (tmp_path / "set").mkdir(exist_ok=True)
    opt = parse_options([*argv, "--name", name, "--checkpoints_dir", str(checkpoints)])
    (checkpoints / name).mkdir(parents=True)
    (checkpoints / name / "train_opt.txt").write_text(format_options(opt) + "\n")
    return checkpoints


def parsed(checkpoints, *argv, is_train=True, name="run"):
    return parse_options([*argv, "--name", name, "--checkpoints_dir", str(checkpoints), "--gpu_ids", "-1"],
                         is_train=is_train)


def test_a_resume_takes_the_model_network_and_data_flags(tmp_path, capsys):
    checkpoints = run_folder(tmp_path, TRAINED + ["--dataroot", str(tmp_path / "set")])
    opt = parsed(checkpoints, "--continue_train")
    assert (opt.model, opt.netG, opt.ngf, opt.ndf, opt.netD, opt.n_layers_D, opt.norm, opt.no_dropout) == \
        ("pix2pix", "resnet_6blocks", 4, 4, "n_layers", 2, "batch", True)
    assert (opt.dataroot, opt.direction, opt.load_size, opt.crop_size, opt.dataset_mode, opt.max_dataset_size) == \
        (str(tmp_path / "set"), "BtoA", 36, 32, "aligned", 2)
    assert "train_opt.txt: --model pix2pix --netG resnet_6blocks --ngf 4" in capsys.readouterr().out


def test_a_flag_given_wins_over_the_saved_one(tmp_path):
    checkpoints = run_folder(tmp_path, TRAINED)
    opt = parsed(checkpoints, "--continue_train", "--crop_size", "16", "--direction", "AtoB", "--ngf", "4")
    assert (opt.crop_size, opt.direction, opt.netG, opt.load_size) == (16, "AtoB", "resnet_6blocks", 36)


def test_a_new_run_or_a_folder_without_train_opt_takes_nothing(tmp_path):
    checkpoints = run_folder(tmp_path, TRAINED)
    assert parsed(checkpoints).netG == "resnet_9blocks"  # no --continue_train: a new run of the same name
    assert parsed(checkpoints, "--continue_train", name="other").model == "cycle_gan"


@pytest.mark.parametrize("flag, given, saved", [
    (["--netG", "resnet_9blocks"], "resnet_9blocks", "resnet_6blocks"),
    (["--ngf", "16"], "16", "4"),
    (["--norm", "instance"], "instance", "batch"),
    (["--n_layers_D", "3"], "3", "2"),
    (["--input_nc", "1"], "1", "3"),
])
def test_a_conflicting_architecture_flag_is_one_line_naming_both_values(tmp_path, capsys, flag, given, saved):
    checkpoints = run_folder(tmp_path, TRAINED)
    with pytest.raises(SystemExit) as stop:
        parsed(checkpoints, "--continue_train", *flag)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert f"{flag[0]} {given} conflicts" in err[0] and f"trained with {flag[0]} {saved}" in err[0]


def test_a_conflicting_switch_is_named_as_typed(tmp_path, capsys):
    checkpoints = run_folder(tmp_path, [flag for flag in TRAINED if flag != "--no_dropout"])
    with pytest.raises(SystemExit):
        parsed(checkpoints, "--continue_train", "--no_dropout")
    err = capsys.readouterr().err
    assert "--no_dropout conflicts with the run in" in err and "trained with no --no_dropout (its train_opt" in err


def test_a_test_takes_the_generator_and_the_size_it_trained_at(tmp_path, capsys):
    checkpoints = run_folder(tmp_path, TRAINED + ["--dataroot", str(tmp_path / "set")])
    opt = parsed(checkpoints, is_train=False)  # --model test, a single folder: the data folder is not the set's
    assert (opt.model, opt.netG, opt.ngf, opt.norm, opt.no_dropout, opt.crop_size, opt.load_size) == \
        ("test", "resnet_6blocks", 4, "batch", True, 32, 32)
    assert opt.dataroot is None and opt.dataset_mode == "single"
    opt = parsed(checkpoints, "--model", "pix2pix", is_train=False)  # the trained model: its data too
    assert (opt.dataroot, opt.dataset_mode, opt.direction) == (str(tmp_path / "set"), "aligned", "BtoA")
    with pytest.raises(SystemExit):
        parsed(checkpoints, "--netG", "unet_256", is_train=False)
    assert "--netG unet_256 conflicts" in capsys.readouterr().err


def test_cycle_gans_b_generator_is_tested_with_the_channels_swapped(tmp_path):
    checkpoints = run_folder(tmp_path, ["--model", "cycle_gan", "--input_nc", "1", "--output_nc", "3"])
    opt = parsed(checkpoints, "--model_suffix", "_B", is_train=False)
    assert (opt.input_nc, opt.output_nc, opt.no_dropout) == (3, 1, True)
    opt = parsed(checkpoints, "--model_suffix", "_A", is_train=False)
    assert (opt.input_nc, opt.output_nc) == (1, 3)


def save_generator(folder, name, norm="instance", ngf=4):
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(define_G(3, 3, ngf, "resnet_6blocks", norm, False).state_dict(), folder / f"latest_net_{name}.pth")


TEST_FLAGS = ["--model", "test", "--netG", "resnet_6blocks", "--ngf", "4", "--no_dropout", "--load_size", "32",
              "--crop_size", "32", "--num_test", "1", "--gpu_ids", "-1"]


def test_model_test_on_a_cycle_gan_run_names_the_suffixes_it_holds(tmp_path, capsys):
    for name in ("G_A", "G_B"):
        save_generator(tmp_path / "checkpoints" / "cyc", name)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "0.png")
    status = test_cli.main([*TEST_FLAGS, "--name", "cyc", "--checkpoints_dir", str(tmp_path / "checkpoints"),
                            "--results_dir", str(tmp_path / "results"), "--dataroot", str(images)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert "latest_net_G_A.pth, latest_net_G_B.pth: give --model_suffix _A or --model_suffix _B" in err[0]


@pytest.mark.parametrize("saved, built, named", [
    (dict(norm="batch"), dict(norm="instance"), "saved from a generator of --norm batch, the flags build one of "
                                                "--norm instance: give --norm batch"),
    (dict(ngf=8), dict(ngf=4), "give --ngf 8"),
])
def test_a_generator_that_does_not_load_names_the_flag_that_differs(tmp_path, saved, built, named):
    save_generator(tmp_path, "G", **saved)
    net = define_G(3, 3, built.get("ngf", 4), "resnet_6blocks", built.get("norm", "instance"), False)
    with pytest.raises(CheckpointError) as error:
        load_network(net, str(tmp_path / "latest_net_G.pth"))
    assert named in str(error.value) and "\n" not in str(error.value) and "missing keys" not in str(error.value)


def test_a_discriminator_that_does_not_load_names_its_flags(tmp_path):
    torch.save(define_D(6, 4, "n_layers", 2, "batch").state_dict(), tmp_path / "latest_net_D.pth")
    with pytest.raises(CheckpointError, match="give --netD n_layers, --n_layers_D 2"):
        load_network(define_D(6, 4, "basic", 3, "batch"), str(tmp_path / "latest_net_D.pth"))


@pytest.mark.slow
def test_a_tiny_run_on_facades_resumes_and_tests_with_only_its_name(shared_data, tmp_path, capsys):
    checkpoints, results = str(tmp_path / "checkpoints"), str(tmp_path / "results")
    folder = ["--name", "facades_tiny", "--checkpoints_dir", checkpoints]
    trained = [*TRAINED, *folder, "--dataroot", os.path.join(shared_data, "facades"), "--n_epochs", "1",
               "--n_epochs_decay", "0", "--seed", "1"]
    assert train_cli.main(trained) == 0
    capsys.readouterr()
    resumed = [*folder, "--continue_train", "--n_epochs", "2", "--n_epochs_decay", "0", "--gpu_ids", "-1",
               "--num_threads", "0", "--no_tensorboard"]
    assert train_cli.main(resumed) == 0, capsys.readouterr().err
    assert "resuming exactly from 'latest'" in capsys.readouterr().out
    assert test_cli.main([*folder, "--model", "pix2pix", "--results_dir", results, "--gpu_ids", "-1",
                          "--num_test", "1"]) == 0, capsys.readouterr().err
    fakes = [name for name in os.listdir(os.path.join(results, "facades_tiny", "test_latest", "images"))
             if name.endswith("_fake_B.png")]
    assert len(fakes) == 1
    with Image.open(os.path.join(results, "facades_tiny", "test_latest", "images", fakes[0])) as image:
        assert image.size == (32, 32)


def test_both_generators_of_a_gray_to_colour_cycle_gan_load_with_only_the_folder(tmp_path):
    from fastp2p.inference import Translator

    checkpoints = run_folder(tmp_path, ["--model", "cycle_gan", "--input_nc", "1", "--output_nc", "3", "--ngf", "4",
                                        "--netG", "resnet_6blocks", "--load_size", "32", "--crop_size", "32"])
    for name, (source, target) in (("G_A", (1, 3)), ("G_B", (3, 1))):
        torch.save(define_G(source, target, 4, "resnet_6blocks", "instance", False).state_dict(),
                   checkpoints / "run" / f"latest_net_{name}.pth")
    colour = Translator(str(checkpoints / "run"), gpu_ids="-1")(torch.zeros(1, 1, 32, 32))
    gray = Translator(str(checkpoints / "run"), generator="G_B", gpu_ids="-1")(torch.zeros(1, 3, 32, 32))
    assert colour.shape == (1, 3, 32, 32) and gray.shape == (1, 1, 32, 32)


@pytest.mark.slow
def test_a_tiny_cycle_gan_on_facades_is_tested_one_side_with_only_its_name(shared_data, tmp_path, capsys):
    checkpoints, results = str(tmp_path / "checkpoints"), str(tmp_path / "results")
    folder = ["--name", "cyc_tiny", "--checkpoints_dir", checkpoints, "--gpu_ids", "-1"]
    unpaired = os.path.join(shared_data, "facades_unpaired")
    assert train_cli.main(["--model", "cycle_gan", "--dataroot", unpaired, *folder, "--netG", "resnet_6blocks",
                           "--ngf", "4", "--ndf", "4", "--load_size", "36", "--crop_size", "32",
                           "--max_dataset_size", "2", "--num_threads", "0", "--no_tensorboard", "--n_epochs", "1",
                           "--n_epochs_decay", "0", "--seed", "2"]) == 0
    capsys.readouterr()
    side = ["--dataroot", os.path.join(unpaired, "testA"), "--results_dir", results, "--num_test", "1", *folder]
    assert test_cli.main(["--model", "test", *side]) == 2
    assert "give --model_suffix _A or --model_suffix _B" in capsys.readouterr().err
    assert test_cli.main(["--model", "test", "--model_suffix", "_A", *side]) == 0, capsys.readouterr().err
    images = os.listdir(os.path.join(results, "cyc_tiny", "test_latest", "images"))
    assert sorted(name.rsplit("_", 1)[1] for name in images) == ["fake.png", "real.png"]


def test_a_resume_builds_its_parser_for_its_dataset_mode(tmp_path):
    checkpoints = run_folder(tmp_path, ["--model", "template", "--dataset_mode", "template", "--new_dataset_option",
                                        "5", "--gpu_ids", "-1"])
    opt = parsed(checkpoints, "--continue_train", "--new_dataset_option", "3")  # the mode's own flag is there
    assert (opt.model, opt.dataset_mode, opt.new_dataset_option, opt.max_dataset_size) == \
        ("template", "template", 3.0, 10)
