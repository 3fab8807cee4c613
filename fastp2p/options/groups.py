"""Every flag of ``fastp2p.train`` and ``fastp2p.test``, declared once, as a field of the frozen dataclass of its
group: its default, help, type and choices are the field's, the parser is built from the fields (parser.py), and a
run's options are instances of these classes (``Options``), which nothing changes after parsing.

A field's ``commands`` say which command takes it as a flag; the other command's options hold its default (or
``test_default``). The model's own flags (``--lambda_L1``) come from its class's ``modify_commandline_options``, as in
the reference, and are kept in ``ModelOptions.extra``. The engine's flags come from the fast-path registry.
"""

import dataclasses
from typing import Any

from fastp2p.data.modes import DATASET_MODES
from fastp2p.data.select import KINDS as DATA_LOADERS
from fastp2p.data.transforms import PREPROCESS_MODES
from fastp2p.engine.path import SWITCH
from fastp2p.engine.registry import PATHS
from fastp2p.flag_types import (adam_beta, finite_non_negative_float, finite_positive_float, non_negative_float,
                                non_negative_int, positive_int, seed_value)
from fastp2p.losses import GAN_MODES
from fastp2p.models import MODELS
from fastp2p.networks import DISCRIMINATORS, GENERATORS, INIT_TYPES, LR_POLICIES, NORM_TYPES
from fastp2p.worker_lifetime import WORKER_START_METHODS

BOTH, TRAIN, TEST = ("train", "test"), ("train",), ("test",)
MONITORING = "monitoring (fastp2p)"
ENGINE = "fast engine (fastp2p)"
COMPATIBILITY = "accepted for compatibility with the reference trainer (no effect)"
NOT_GIVEN = object()


def flag(default, help, *, commands=BOTH, section=None, test_default=NOT_GIVEN, **argparse_keywords):
    """A field that is also a command-line flag: ``argparse_keywords`` go to add_argument (type, choices, action)."""
    metadata = dict(help=help, commands=commands, section=section, argparse=argparse_keywords,
                    test_default=default if test_default is NOT_GIVEN else test_default)
    return dataclasses.field(default=default, metadata=metadata)


def switch(help, **keywords):
    return flag(False, help, action="store_true", **keywords)


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Which run: its name and folders, the checkpoint it loads, its device(s) and seed."""

    name: str = flag("experiment_name", "experiment name: checkpoints/NAME, results/NAME")
    gpu_ids: Any = flag("0", "GPUs to use, e.g. 0 or 0,1,2; -1 for the CPU")
    checkpoints_dir: str = flag("./checkpoints",
                                "folder of the runs: checkpoints and options go to CHECKPOINTS_DIR/NAME")
    epoch: str = flag("latest", "which checkpoint to load: latest, an epoch number or another saved prefix")
    load_iter: int = flag(0, "> 0: load the iter_N checkpoint instead of --epoch", type=non_negative_int)
    verbose: bool = switch("print every network's layers")
    suffix: str = flag("", "append _SUFFIX to --name, its {fields} filled with option values, e.g. "
                           "{netG}_bs{batch_size}")
    seed: int | None = flag(None, "seeds every random draw; a run without it picks one and records it (fastp2p)",
                            type=seed_value)


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """The model and its networks, losses and optimizers; ``extra`` holds the flags of the model's own."""

    model: str = flag("cycle_gan", "cycle_gan: two generators trained on unpaired A and B images; pix2pix: one "
                                   "generator trained on paired images; test: one generator for inference; "
                                   f"built-in: {', '.join(MODELS)}; any other NAME is your own class (module "
                                   "NAME_model in ./models or on sys.path, or package.module:Class: "
                                   "docs/extending.md)", test_default="test")
    input_nc: int = flag(3, "channels of the input images: 3 for RGB, 1 for gray", type=positive_int)
    output_nc: int = flag(3, "channels of the output images: 3 for RGB, 1 for gray", type=positive_int)
    ngf: int = flag(64, "filters in the generator's last conv layer", type=positive_int)
    ndf: int = flag(64, "filters in the discriminator's first conv layer", type=positive_int)
    netD: str = flag("basic", "discriminator: basic is a 70x70 PatchGAN, n_layers a PatchGAN of --n_layers_D "
                              "layers, pixel a 1x1 PatchGAN", choices=DISCRIMINATORS)
    netG: str = flag("resnet_9blocks", "generator: a ResNet of 9 or 6 residual blocks, or a U-Net for 256- or "
                                       "128-pixel images", choices=GENERATORS)
    n_layers_D: int = flag(3, "conv layers of --netD n_layers", type=positive_int)
    norm: str = flag("instance", "normalization layers: instance, batch, syncbatch (batch statistics shared by all "
                                 "processes) or none", choices=NORM_TYPES)
    init_type: str = flag("normal", "weight initialization", choices=INIT_TYPES)
    init_gain: float = flag(0.02, "scale of the normal, xavier and orthogonal initializations",
                            type=finite_non_negative_float)
    no_dropout: bool = switch("no dropout in the generator")
    gan_mode: str = flag("lsgan", "GAN loss: vanilla (cross-entropy), lsgan (least squares) or wgangp (Wasserstein "
                                  "with gradient penalty)", choices=GAN_MODES, commands=TRAIN)
    pool_size: int = flag(50, "size of the buffer of generated images the discriminator is shown (CycleGAN); 0: "
                              "none", type=non_negative_int, commands=TRAIN)
    beta1: float = flag(0.5, "Adam's beta1, the momentum term", type=adam_beta, commands=TRAIN)
    lr: float = flag(0.0002, "initial Adam learning rate", type=finite_non_negative_float, commands=TRAIN)
    lr_policy: str = flag("linear", "learning rate schedule: linear (constant for --n_epochs, then to zero over "
                                    "--n_epochs_decay), step (x0.1 every --lr_decay_iters epochs), plateau or cosine",
                          choices=LR_POLICIES, commands=TRAIN)
    lr_decay_iters: int = flag(50, "with --lr_policy step: multiply the learning rate by 0.1 every N epochs",
                               type=positive_int, commands=TRAIN)
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """Where the images are and how they are read, preprocessed and batched."""

    dataroot: str | None = flag(None, "dataset folder; without it the built-in synthetic dataset is used")
    dataset_mode: str = flag("unaligned", "how images are read: aligned (A|B pairs side by side in DATAROOT/PHASE), "
                                          "unaligned (DATAROOT/PHASEA and PHASEB) or single (every image in DATAROOT, "
                                          "one direction); built-in: " + ", ".join(DATASET_MODES) + "; any other "
                                          "NAME is your own class (module NAME_dataset in ./data or on sys.path, or "
                                          "package.module:Class)")
    direction: str = flag("AtoB", "AtoB translates A images into B images; BtoA the other way",
                          choices=("AtoB", "BtoA"))
    phase: str = flag("train", "the dataset split to read: DATAROOT/PHASE, or PHASEA and PHASEB", test_default="test")
    serial_batches: bool = switch("take the images in order instead of shuffled")
    num_threads: int = flag(4, "data loading worker processes", type=non_negative_int)
    batch_size: int = flag(1, "images per batch", type=positive_int)
    accum_steps: int = flag(1, "take one optimizer step per N batches of --batch_size (gradient accumulation): the "
                               "step of one N x batch_size batch in the memory of one batch; the same result with "
                               "per-sample norms (--norm instance or none), not with --norm batch (statistics per "
                               "batch); the image counters and the --*_freq flags count as for one N x batch_size "
                               "batch", type=positive_int, commands=TRAIN)
    load_size: int = flag(286, "scale images to this size (see --preprocess)", type=positive_int, test_default=256)
    crop_size: int = flag(256, "then crop them to this size", type=positive_int)
    max_dataset_size: float = flag(float("inf"), "read at most this many images of each folder",
                                   type=non_negative_float)
    preprocess: str = flag("resize_and_crop", "resize_and_crop: resize to --load_size, then crop --crop_size; crop: "
                                              "crop only; scale_width: scale the width to --load_size (and_crop: "
                                              "then crop); none: round each side to a multiple of 4",
                           choices=PREPROCESS_MODES)
    no_flip: bool = switch("do not flip images left-right at random")
    worker_start: str = flag("spawn", "how the torch loader's --num_threads workers start (fastp2p): spawn inherits "
                                      "nothing from the trainer; fork (the reference's) starts faster but can hang in "
                                      "state inherited from the trainer's threads (DALI, Triton, TensorBoard, CUDA)",
                             choices=WORKER_START_METHODS)
    data_loader: str = flag("auto", "input pipeline (fastp2p): torch is the reference PIL + DataLoader path; auto "
                                    "picks the GPU-resident cache when the set fits, else DALI, else torchvision GPU "
                                    "decode, on a GPU, and torch on the CPU", choices=DATA_LOADERS, commands=TRAIN)


@dataclasses.dataclass(frozen=True)
class TrainingOptions:
    """The training loop: its epochs, where it starts, and what it saves when."""

    continue_train: bool = switch("resume from the latest checkpoint (or the one --epoch / --load_iter names)",
                                  commands=TRAIN)
    epoch_count: int = flag(1, "number of the first epoch, from which the epochs and the learning rate schedule count "
                               "(a resume with a training state takes the saved run's)", type=positive_int,
                            commands=TRAIN)
    n_epochs: int = flag(100, "epochs at the initial learning rate", type=non_negative_int, commands=TRAIN)
    n_epochs_decay: int = flag(100, "epochs over which the learning rate then decays to zero", type=non_negative_int,
                               commands=TRAIN)
    save_latest_freq: int = flag(5000, "every N images, save the latest checkpoint", type=positive_int,
                                 commands=TRAIN)
    save_epoch_freq: int = flag(5, "every N epochs, keep that epoch's checkpoint", type=positive_int, commands=TRAIN)
    save_by_iter: bool = switch("save the --save_latest_freq checkpoints as iter_N instead of overwriting latest",
                                commands=TRAIN)
    save_epoch_state: bool = switch("keep a training state (optimizer moments: twice the networks' size) with every "
                                    "epoch snapshot too, so --continue_train --epoch N resumes exactly (fastp2p; by "
                                    "default only latest and iter_* have one)", commands=TRAIN)


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """fastp2p.test's own: where results go and how many images."""

    results_dir: str = flag("./results/", "images and their HTML page go to RESULTS_DIR/NAME/PHASE_EPOCH",
                            commands=TEST)
    aspect_ratio: float = flag(1.0, "stretch the saved images: > 1 multiplies their height by it, < 1 their width by "
                                    "its inverse", type=finite_positive_float, commands=TEST)
    eval: bool = switch("eval mode: BatchNorm running stats, no dropout", commands=TEST)
    num_test: int = flag(50, "translate at most this many images", type=positive_int, commands=TEST)


@dataclasses.dataclass(frozen=True)
class MonitoringOptions:
    """What a run shows of itself: the console, the HTML page, TensorBoard, wandb, metrics."""

    display_winsize: int = flag(256, "width of the images on the HTML pages", type=positive_int)
    display_freq: int = flag(400, "every N images, show the current results (TensorBoard; the HTML page: "
                                  "--update_html_freq)", type=positive_int, commands=TRAIN)
    update_html_freq: int = flag(1000, "every N images, also save the results shown to the HTML page (and at each "
                                       "epoch's first)", type=positive_int, commands=TRAIN)
    print_freq: int = flag(100, "every N images, print the losses", type=positive_int, commands=TRAIN)
    no_html: bool = switch("do not save results to CHECKPOINTS_DIR/NAME/web", commands=TRAIN)
    use_wandb: bool = switch("also log losses, learning rate, throughput and metrics to Weights & Biases (needs the "
                             "wandb package)", section=MONITORING)
    wandb_project_name: str = flag("CycleGAN-and-pix2pix", "wandb project", section=MONITORING)
    no_tensorboard: bool = switch("do not write TensorBoard logs even when tensorboard is installed",
                                  section=MONITORING, commands=TRAIN)
    eval_freq: int = flag(0, "score the generator on the val (else test) split every N epochs: L1/PSNR/SSIM for "
                             "paired data, FID/KID with the metrics extra; 0 = off", type=non_negative_int,
                          section=MONITORING, commands=TRAIN)


NO_EFFECT = "no effect in fastp2p"


@dataclasses.dataclass(frozen=True)
class CompatibilityOptions:
    """The reference's visdom flags of training: accepted so that its command lines run unchanged, never read
    (fastp2p writes the HTML page, TensorBoard and wandb logs instead)."""

    display_ncols: int = flag(4, f"{NO_EFFECT}: no visdom display", type=int, section=COMPATIBILITY, commands=TRAIN)
    display_id: int = flag(1, f"{NO_EFFECT}: no visdom display", type=int, section=COMPATIBILITY, commands=TRAIN,
                           test_default=-1)
    display_server: str = flag("http://localhost", f"{NO_EFFECT}: no visdom server", section=COMPATIBILITY,
                               commands=TRAIN)
    display_env: str = flag("main", f"{NO_EFFECT}: no visdom server", section=COMPATIBILITY, commands=TRAIN)
    display_port: int = flag(8097, f"{NO_EFFECT}: no visdom server", type=int, section=COMPATIBILITY, commands=TRAIN)


def engine_field(path):
    """A fast path's flag: its own choices and help; fastp2p.test takes it only where the path has an inference
    help, and fixes the others to their 'off'."""
    keywords = dict(path.flag, choices=path.choices)
    inference = path.inference_help is not None
    return (path.name, Any, flag(path.default, path.help, section=ENGINE, commands=BOTH if inference else TRAIN,
                                 test_default=path.default if inference else path.off_flag, **keywords))


EngineOptions = dataclasses.make_dataclass(
    "EngineOptions", [engine_field(path) for path in PATHS] + [
        ("reference", bool, switch("the plain reference path: every fast path off, whatever the switches above say",
                                   section=ENGINE)),
        ("selfcheck", str, flag("auto", "check the fast paths this run turns on against the reference path on this "
                                        "device before it starts (in a separate process, its verdict cached): a path "
                                        "'auto' chose that fails is turned off, one asked for with 'on' stops the run; "
                                        "auto = on a GPU when no cached verdict fits", choices=SWITCH, section=ENGINE)),
        ("selfcheck_timeout", float, flag(600.0, "seconds the self-check may take before a path it is checking counts "
                                                 "as hung", type=finite_positive_float, section=ENGINE))],
    frozen=True)
EngineOptions.__module__ = __name__  # pickled by name (spawned loader workers get the options)
EngineOptions.__doc__ = "The fast paths as asked for (auto, on, off, ...): one field per path of engine.registry."
INFERENCE_HELP = {path.name: path.inference_help for path in PATHS if path.inference_help is not None}

GROUPS = {"run": RunOptions, "model_options": ModelOptions, "data": DataOptions, "training": TrainingOptions,
          "inference": InferenceOptions, "monitoring": MonitoringOptions, "engine": EngineOptions,
          "compatibility": CompatibilityOptions}
"""Options' groups, in the order --help lists them"""
FLAG_GROUP = {field.name: group for group, cls in GROUPS.items() for field in dataclasses.fields(cls)
              if field.name != "extra"}
