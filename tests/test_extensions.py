"""A user's own model and dataset, written the reference's way in a folder outside the package, found by --model and
--dataset_mode, trained on real images, resumed exactly, and tested with fastp2p.test; lookup errors in one line."""

import os
import shutil
import textwrap

import pytest
import torch

from fastp2p import networks
from fastp2p import test as test_cli
from fastp2p import train as train_cli
from fastp2p.checkpoint import read_checkpoint
from fastp2p.engine import prepare_model, resolve_engine, runtime_for
from fastp2p.errors import OptionError
from fastp2p.models import BaseModel, create_model
from fastp2p.options import parse_options

FACADES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                       "facades")

# the reference's template model as a user would write it, with only its two imports changed
USER_MODEL = '''
import torch
from fastp2p.models import BaseModel
from fastp2p import networks


class MyNetModel(BaseModel):
    @staticmethod
    def modify_commandline_options(parser, is_train=True):
        parser.set_defaults(dataset_mode='aligned')
        if is_train:
            parser.add_argument('--lambda_regression', type=float, default=1.0, help='weight for the regression loss')
        return parser

    def __init__(self, opt):
        BaseModel.__init__(self, opt)
        self.loss_names = ['loss_G']
        self.visual_names = ['data_A', 'data_B', 'output']
        self.model_names = ['G']
        self.netG = networks.define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, gpu_ids=self.gpu_ids)
        if self.isTrain:
            self.criterionLoss = torch.nn.L1Loss()
            self.optimizer = torch.optim.Adam(self.netG.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
            self.optimizers = [self.optimizer]

    def set_input(self, input):
        AtoB = self.opt.direction == 'AtoB'
        self.data_A = input['A' if AtoB else 'B'].to(self.device)
        self.data_B = input['B' if AtoB else 'A'].to(self.device)
        self.image_paths = input['A_paths' if AtoB else 'B_paths']

    def forward(self):
        self.output = self.netG(self.data_A)

    def backward(self):
        self.loss_G = self.criterionLoss(self.output, self.data_B) * self.opt.lambda_regression
        self.loss_G.backward()

    def optimize_parameters(self):
        self.forward()
        self.optimizer.zero_grad()
        self.backward()
        self.optimizer.step()
'''

# a dataset written the reference's way: its own __getitem__(index), the reference's get_transform
USER_DATASET = '''
import os
from PIL import Image
from fastp2p.data import BaseDataset, get_transform, make_dataset


class HalvesDataset(BaseDataset):
    @staticmethod
    def modify_commandline_options(parser, is_train):
        parser.add_argument('--halves_option', type=float, default=1.0, help='a dataset flag of its own')
        parser.set_defaults(halves_option=2.0)
        return parser

    def __init__(self, opt):
        BaseDataset.__init__(self, opt)
        self.paths = sorted(make_dataset(os.path.join(opt.dataroot, opt.phase), opt.max_dataset_size))
        self.transform = get_transform(opt)

    def __getitem__(self, index):
        image = Image.open(self.paths[index]).convert('RGB')
        w, h = image.size
        left, right = image.crop((0, 0, w // 2, h)), image.crop((w // 2, 0, w, h))
        return {'A': self.transform(left), 'B': self.transform(right), 'A_paths': self.paths[index],
                'B_paths': self.paths[index]}

    def __len__(self):
        return len(self.paths)
'''


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory):
    """A working directory with the user's models/ and data/ packages, a package.module:Class one, a model left
    with the reference's imports, and three real facades pairs (one test pair)."""
    if not os.path.isdir(FACADES):
        pytest.skip("no ../shared/data/facades here")
    root = tmp_path_factory.mktemp("user")
    files = {"models/__init__.py": "", "models/my_net_model.py": USER_MODEL,
             "models/broken_model.py": "from .base_model import BaseModel\n",
             "models/misnamed_model.py": USER_MODEL.replace("class MyNetModel", "class SomethingElse"),
             "data/__init__.py": "", "data/halves_dataset.py": USER_DATASET,
             "data/nopaths_dataset.py": USER_DATASET.replace("class HalvesDataset", "class NopathsDataset").replace(
                 "'A_paths': self.paths[index],", "").replace("'B_paths': self.paths[index]", ""),
             "mine/__init__.py": "", "mine/nets.py": USER_MODEL}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    for split, count in (("train", 3), ("test", 1)):
        (root / "facades" / split).mkdir(parents=True)
        for name in sorted(os.listdir(os.path.join(FACADES, split)))[:count]:
            shutil.copy(os.path.join(FACADES, split, name), root / "facades" / split / name)
    return root


def user_flags(root, name, epochs=(1, 1), model="my_net"):
    return ["--model", model, "--dataroot", str(root / "facades"), "--name", name,
            "--checkpoints_dir", str(root / "checkpoints"), "--gpu_ids", "-1", "--num_threads", "0", "--ngf", "8",
            "--netG", "resnet_6blocks", "--load_size", "36", "--crop_size", "32", "--no_tensorboard", "--seed", "4",
            "--n_epochs", str(epochs[0]), "--n_epochs_decay", str(epochs[1]), "--print_freq", "1",
            "--display_freq", "1", "--save_epoch_freq", "1", "--save_latest_freq", "2", "--save_by_iter"]


def weights(root, name):
    return read_checkpoint(str(root / "checkpoints" / name / "latest_net_G.pth"))


def test_a_user_model_is_found_the_references_way_with_its_flags(user_folder, monkeypatch):
    monkeypatch.chdir(user_folder)
    opt = parse_options(user_flags(user_folder, "found"))
    assert opt.lambda_regression == 1.0 and opt.dataset_mode == "aligned"
    dotted = parse_options(user_flags(user_folder, "found", model="mine.nets:MyNetModel"))
    assert dotted.lambda_regression == 1.0


@pytest.mark.parametrize("model, message", [
    ("nosuch", "unknown --model nosuch: not a built-in (pix2pix, cycle_gan, test"),
    ("pix2px", "unknown --model pix2px (did you mean pix2pix?)"),
    ("broken", "--model broken: importing models.broken_model failed: ModuleNotFoundError: No module named "
               "'models.base_model'"),
    ("misnamed", "misnamed_model.py defines no subclass of fastp2p.models.base_model.BaseModel named MisnamedModel"),
    ("mine.nets:Nothing", "--model mine.nets:Nothing: "),
    ("mine.absent:Thing", "--model mine.absent:Thing: no module mine.absent importable from"),
])
def test_a_name_that_finds_no_class_is_one_line_saying_where_it_looked(user_folder, monkeypatch, capsys, model,
                                                                       message):
    monkeypatch.chdir(user_folder)
    with pytest.raises(SystemExit) as exit_info:
        parse_options(["--model", model])
    assert exit_info.value.code == 2
    first = capsys.readouterr().err.splitlines()[0]
    assert message in first
    if model == "nosuch":
        assert "models.nosuch_model or nosuch_model importable from " + str(user_folder) in first


def test_an_unknown_dataset_mode_is_one_line(user_folder, monkeypatch, capsys):
    monkeypatch.chdir(user_folder)
    with pytest.raises(SystemExit):
        parse_options(["--dataset_mode", "nosuch"])
    assert "unknown --dataset_mode nosuch: not a built-in (aligned, unaligned, single" in capsys.readouterr().err


@pytest.mark.slow
def test_a_user_model_trains_resumes_exactly_and_tests(user_folder, monkeypatch, capsys):
    """3 real pairs, 2 epochs; the cut run stops after epoch 1 and resumes from iter_2 (mid-epoch 1)."""
    monkeypatch.chdir(user_folder)
    assert train_cli.main(user_flags(user_folder, "whole")) == 0
    out = capsys.readouterr().out
    assert "model [MyNetModel] was created" in out
    assert "engine: MyNetModel builds and steps its own optimizers (the reference's way): fused_adam" in out
    assert "loss_G: " in out  # the reference's template lists 'loss_G', found under that name
    assert train_cli.main(user_flags(user_folder, "cut", epochs=(1, 0))) == 0
    capsys.readouterr()
    resumed = user_flags(user_folder, "cut") + ["--continue_train", "--load_iter", "2"]
    assert train_cli.main(resumed) == 0
    assert "epoch 1, 2 images into it" in capsys.readouterr().out
    whole, cut = weights(user_folder, "whole"), weights(user_folder, "cut")
    assert whole.keys() == cut.keys() and all(torch.equal(whole[key], cut[key]) for key in whole)

    results = user_folder / "results"
    test_flags = ["--model", "my_net", "--dataroot", str(user_folder / "facades"), "--name", "whole",
                  "--checkpoints_dir", str(user_folder / "checkpoints"), "--results_dir", str(results), "--gpu_ids",
                  "-1", "--ngf", "8", "--netG", "resnet_6blocks", "--load_size", "32", "--crop_size", "32",
                  "--num_test", "1"]
    assert test_cli.main(test_flags) == 0
    images = sorted(os.listdir(results / "whole" / "test_latest" / "images"))
    assert len(images) == 3 and any(name.endswith("_output.png") for name in images)
    capsys.readouterr()
    assert test_cli.main(test_flags + ["--dataset_mode", "nopaths"]) == 2
    assert "the items of --dataset_mode nopaths have no 'A_paths'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_user_dataset_with_its_own_getitem_trains_in_spawned_workers(user_folder, monkeypatch, capsys):
    monkeypatch.chdir(user_folder)
    flags = user_flags(user_folder, "halves", epochs=(1, 0)) + ["--dataset_mode", "halves", "--num_threads", "1"]
    assert train_cli.main(flags) == 0
    out = capsys.readouterr().out
    assert "dataset [HalvesDataset] was created" in out
    saved = (user_folder / "checkpoints" / "halves" / "train_opt.txt").read_text()
    assert "halves_option: 2.0" in saved


class OwnOptimizersModel(BaseModel):
    """A model of the reference's kind, importable as tests.test_extensions:OwnOptimizersModel."""

    def __init__(self, opt):
        BaseModel.__init__(self, opt)
        self.loss_names, self.visual_names, self.model_names = ["G"], ["fake"], ["G"]
        self.netG = networks.define_G(opt.input_nc, opt.output_nc, opt.ngf, opt.netG, gpu_ids=self.gpu_ids)
        if self.isTrain:
            self.optimizer_G = torch.optim.Adam(self.netG.parameters(), lr=opt.lr, betas=(opt.beta1, 0.999))
            self.optimizers = [self.optimizer_G]

    def set_input(self, input):
        self.real = input["A"].to(self.device)

    def forward(self):
        self.fake = self.netG(self.real)

    def optimize_parameters(self):
        self.forward()
        self.optimizer_G.zero_grad()
        self.loss_G = self.fake.abs().mean()
        self.loss_G.backward()
        self.optimizer_G.step()


OWN = "tests.test_extensions:OwnOptimizersModel"
SMALL = ["--gpu_ids", "-1", "--ngf", "4", "--netG", "resnet_6blocks", "--crop_size", "32", "--load_size", "32",
         "--checkpoints_dir", "/nonexistent"]


def test_a_model_with_its_own_optimizers_gets_the_paths_for_its_networks_only():
    """Resolved for a GPU without one (--amp bf16 spares asking the device): the optimizer and graph paths that auto
    gives pix2pix are off for the model that steps its own optimizers, the network paths stay on."""
    flags = [*SMALL, "--amp", "bf16"]
    own = resolve_engine(parse_options(["--model", OWN, *flags]), torch.device("cuda"))
    builtin = resolve_engine(parse_options(["--model", "pix2pix", *flags]), torch.device("cuda"))
    assert builtin.fused_adam and builtin.cuda_graph and builtin.step_cast
    assert not (own.fused_adam or own.cuda_graph or own.step_cast)
    assert own.channels_last and own.fused_kernels and own.amp == torch.bfloat16


@pytest.mark.parametrize("flags", [["--fused_adam", "on"], ["--amp", "fp16"]])
def test_asking_an_optimizer_path_for_such_a_model_says_why_not(flags):
    with pytest.raises(OptionError, match="OwnOptimizersModel|steps its own optimizers"):
        resolve_engine(parse_options(["--model", OWN, *SMALL, *flags]), torch.device("cuda"))


@pytest.mark.slow
def test_the_engine_keeps_the_models_optimizers_and_converts_its_networks():
    opt = parse_options(["--model", OWN, *SMALL, "--channels_last", "on", "--norm", "batch"])
    config = resolve_engine(opt, torch.device("cpu"))
    model = create_model(opt, runtime_for(config, torch.device("cpu")))
    model.setup(opt)
    optimizer = model.optimizer_G
    step = prepare_model(model, config)
    assert model.optimizers == [optimizer] and model.optimizer_names() == ["G"] and len(model.schedulers) == 1
    assert model.netG.model[1].weight.is_contiguous(memory_format=torch.channels_last)
    before = model.netG.model[1].weight.detach().clone()
    step({"A": torch.rand(1, 3, 32, 32) * 2 - 1})
    assert not torch.equal(before, model.netG.model[1].weight)


@pytest.mark.slow
def test_the_fused_kernels_apply_to_the_networks_of_a_model_with_its_own_optimizers():
    """--fused_kernels on (Triton's interpreter on the CPU) replaces the norms of its generator, and its step trains
    as the plain path's does, within the fused kernels' tolerance."""
    from fastp2p.engine.fusion import FUSED_KERNELS

    def one_step(*flags):
        opt = parse_options(["--model", OWN, *SMALL, "--norm", "instance", "--seed", "0", *flags])
        config = resolve_engine(opt, torch.device("cpu"))
        torch.manual_seed(0)
        model = create_model(opt, runtime_for(config, torch.device("cpu")))
        model.setup(opt)
        step = prepare_model(model, config)
        step({"A": torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1})
        return model

    plain, fused = one_step(), one_step("--fused_kernels", "on")
    norms = [type(m).__name__ for m in fused.netG.modules() if "norm" in type(m).__name__.lower()]
    assert norms and "InstanceNorm2d" not in norms
    tolerance = FUSED_KERNELS.check.tolerance
    assert torch.allclose(fused.loss_G, plain.loss_G, rtol=tolerance.loss_rtol, atol=tolerance.loss_atol)
