"""--model template and --dataset_mode template: the reference's defaults and flags, its regression step, its network
file, and its pre-push train/test commands on real images."""

import copy
import os
import shutil

import pytest
import torch

from fastp2p import networks
from fastp2p import test as test_cli
from fastp2p import train as train_cli
from fastp2p.data import create_dataset
from fastp2p.engine import EngineConfig, prepare_model
from fastp2p.models import TemplateModel, create_model
from fastp2p.options import parse_options
from tests.test_extensions import FACADES
from tests.test_models import make_batches, make_opt
from tests.test_train_cli import write_images


def test_the_template_models_defaults_and_flag_are_the_references():
    opt = parse_options(["--model", "template", "--gpu_ids", "-1"])
    assert (opt.dataset_mode, opt.norm, opt.no_dropout, opt.lambda_regression) == ("aligned", "batch", True, 1.0)
    assert not hasattr(parse_options(["--model", "template"], is_train=False), "lambda_regression")


def test_the_template_dataset_has_its_flag_and_its_lower_size_cap(tmp_path):
    write_images(tmp_path / "train", 12, (36, 36), seed=0)
    opt = parse_options(["--model", "template", "--dataset_mode", "template", "--dataroot", str(tmp_path),
                         "--gpu_ids", "-1", "--num_threads", "0", "--load_size", "36", "--crop_size", "32"])
    assert (opt.new_dataset_option, opt.max_dataset_size) == (2.0, 10)
    loader = create_dataset(opt)
    assert len(loader) == 10
    item = loader.dataset[(0, 3)]
    assert torch.equal(item["A"], item["B"]) and item["A"].shape == (3, 32, 32)
    assert os.path.basename(item["A_paths"]) == sorted(os.listdir(tmp_path / "train"))[3]


def test_the_template_step_is_adam_on_the_weighted_l1(tmp_path):
    opt = make_opt(tmp_path, model="template", netG="resnet_6blocks", no_dropout=True, lambda_regression=3.0)
    model = create_model(opt)
    model.setup(opt)
    prepare_model(model, EngineConfig())
    by_hand = copy.deepcopy(model.netG)
    adam = torch.optim.Adam(by_hand.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
    batch = make_batches(1, 2, 32)[0]
    model.set_input(batch)
    model.optimize_parameters()
    loss = torch.nn.functional.l1_loss(by_hand(batch["A"]), batch["B"]) * 3.0
    loss.backward()
    adam.step()
    assert torch.allclose(model.loss_G, loss)
    for mine, theirs in zip(model.netG.parameters(), by_hand.parameters()):
        assert torch.allclose(mine, theirs, atol=1e-7)
    assert model.get_current_losses().keys() == {"G"}


def test_the_template_generator_file_is_the_references(tmp_path):
    """The reference builds it with BatchNorm and no dropout: the same keys as define_G(..., 'batch', False)."""
    opt = parse_options(["--model", "template", "--gpu_ids", "-1", "--ngf", "8", "--checkpoints_dir", str(tmp_path)])
    model = create_model(opt)
    assert isinstance(model, TemplateModel) and model.model_names == ["G"]
    (name, state), = model.network_files("latest")
    reference = networks.define_G(3, 3, 8, "resnet_9blocks", "batch", False).state_dict()
    assert name == "latest_net_G.pth" and list(state) == list(reference)


@pytest.mark.slow
def test_the_references_pre_push_template_commands_run(tmp_path):
    """The reference's test_before_push.py template lines, with fastp2p's commands, on real facades pairs."""
    if not os.path.isdir(FACADES):
        pytest.skip("no ../shared/data/facades here")
    for split in ("train", "test"):
        os.makedirs(tmp_path / "mini" / split)
        for name in sorted(os.listdir(os.path.join(FACADES, split)))[:2]:
            shutil.copy(os.path.join(FACADES, split, name), tmp_path / "mini" / split / name)
    common = ["--model", "template", "--name", "temp2", "--dataroot", str(tmp_path / "mini"), "--checkpoints_dir",
              str(tmp_path / "checkpoints"), "--gpu_ids", "-1", "--ngf", "8", "--netG", "resnet_6blocks"]
    assert train_cli.main(common + ["--n_epochs", "1", "--n_epochs_decay", "0", "--save_latest_freq", "10",
                                    "--display_id", "-1", "--num_threads", "0", "--load_size", "36",
                                    "--crop_size", "32", "--no_tensorboard"]) == 0
    assert os.path.isfile(tmp_path / "checkpoints" / "temp2" / "latest_net_G.pth")
    assert test_cli.main(common + ["--num_test", "1", "--results_dir", str(tmp_path / "results"),
                                   "--load_size", "32", "--crop_size", "32"]) == 0
    images = sorted(os.listdir(tmp_path / "results" / "temp2" / "test_latest" / "images"))
    assert [name.split("_", 1)[1] for name in images] == ["data_A.png", "data_B.png", "output.png"]
