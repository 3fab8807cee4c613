"""Command-line options: the reference trainer's flags verbatim, plus fastp2p's own.

Parsing follows the reference's order so that defaults come out the same: the base flags are read
first, the chosen model then adds its own flags and changes defaults (``--model pix2pix`` switches
norm, netG, dataset_mode, pool_size and gan_mode), and a final strict parse rejects unknown flags.
The result is an ``argparse.Namespace`` with the reference's attribute names, which every other
module reads.
"""

import argparse
import difflib
import math
import os
import tempfile

import torch

from fastp2p.data.datasets import DATASET_MODES as DATASET_CLASSES
from fastp2p.data.loader import WORKER_START_METHODS
from fastp2p.data.select import KINDS as DATA_LOADERS
from fastp2p.data.transforms import PREPROCESS_MODES
from fastp2p.errors import OptionError
from fastp2p.losses import GAN_MODES
from fastp2p.models import MODELS as MODEL_CLASSES
from fastp2p.networks import DISCRIMINATORS, GENERATORS, INIT_TYPES, LR_POLICIES, NORM_TYPES

# The choices come from the code that implements them, so a flag and its implementation cannot drift apart.
MODELS = tuple(MODEL_CLASSES)
DATASET_MODES = tuple(DATASET_CLASSES)


def closest(word, candidates):
    """The candidate closest to a misspelled ``word``, or None when none is close."""
    matches = difflib.get_close_matches(word, candidates, n=1)
    return matches[0] if matches else None


class FlagParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors fit on a screen: the error first, with a guess at a misspelled choice, then a
    pointer to --help instead of a usage line that lists every flag."""

    def _check_value(self, action, value):
        try:
            super()._check_value(action, value)
        except argparse.ArgumentError as error:
            guess = closest(str(value), [str(choice) for choice in action.choices])
            hint = f" (did you mean {guess}?)" if guess else ""
            raise argparse.ArgumentError(action, error.message + hint) from None

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\nrun with --help to list every flag and its default\n")


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def finite_float(text, requirement, accepts):
    """A float in a range: NaN or an infinity reaching an optimizer, a loss weight or a weight init would fail
    deep inside torch, or silently turn every weight into NaN."""
    value = float(text)
    if not (math.isfinite(value) and accepts(value)):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    return value


def finite_non_negative_float(text):
    return finite_float(text, "a finite number >= 0", lambda value: value >= 0)


def finite_positive_float(text):
    return finite_float(text, "a finite number > 0", lambda value: value > 0)


def adam_beta(text):
    return finite_float(text, "a number in [0, 1), as Adam needs", lambda value: 0 <= value < 1)


def add_base_options(parser):
    """Flags shared by training and inference (reference BaseOptions), plus --seed."""
    p = parser
    p.add_argument("--dataroot", default=None,
                   help="dataset folder; without it the built-in synthetic dataset is used")
    p.add_argument("--name", default="experiment_name", help="experiment name: checkpoints/NAME, results/NAME")
    p.add_argument("--gpu_ids", default="0", help="GPUs to use, e.g. 0 or 0,1,2; -1 for the CPU")
    p.add_argument("--checkpoints_dir", default="./checkpoints",
                   help="folder of the runs: checkpoints and options go to CHECKPOINTS_DIR/NAME")
    p.add_argument("--model", default="cycle_gan", choices=MODELS,
                   help="cycle_gan: two generators trained on unpaired A and B images; pix2pix: one generator "
                        "trained on paired images; test: one generator for inference")
    p.add_argument("--input_nc", type=positive_int, default=3,
                   help="channels of the input images: 3 for RGB, 1 for gray")
    p.add_argument("--output_nc", type=positive_int, default=3,
                   help="channels of the output images: 3 for RGB, 1 for gray")
    p.add_argument("--ngf", type=positive_int, default=64, help="filters in the generator's last conv layer")
    p.add_argument("--ndf", type=positive_int, default=64, help="filters in the discriminator's first conv layer")
    p.add_argument("--netD", default="basic", choices=DISCRIMINATORS,
                   help="discriminator: basic is a 70x70 PatchGAN, n_layers a PatchGAN of --n_layers_D layers, "
                        "pixel a 1x1 PatchGAN")
    p.add_argument("--netG", default="resnet_9blocks", choices=GENERATORS,
                   help="generator: a ResNet of 9 or 6 residual blocks, or a U-Net for 256- or 128-pixel images")
    p.add_argument("--n_layers_D", type=positive_int, default=3, help="conv layers of --netD n_layers")
    p.add_argument("--norm", default="instance", choices=NORM_TYPES,
                   help="normalization layers: instance, batch, syncbatch (batch statistics shared by all "
                        "processes) or none")
    p.add_argument("--init_type", default="normal", choices=INIT_TYPES, help="weight initialization")
    p.add_argument("--init_gain", type=finite_non_negative_float, default=0.02,
                   help="scale of the normal, xavier and orthogonal initializations")
    p.add_argument("--no_dropout", action="store_true", help="no dropout in the generator")
    p.add_argument("--dataset_mode", default="unaligned", choices=DATASET_MODES,
                   help="how images are read: aligned (A|B pairs side by side in DATAROOT/PHASE), unaligned "
                        "(DATAROOT/PHASEA and PHASEB) or single (every image in DATAROOT, one direction)")
    p.add_argument("--direction", default="AtoB", choices=("AtoB", "BtoA"),
                   help="AtoB translates A images into B images; BtoA the other way")
    p.add_argument("--serial_batches", action="store_true", help="take the images in order instead of shuffled")
    p.add_argument("--num_threads", type=non_negative_int, default=4, help="data loading worker processes")
    p.add_argument("--batch_size", type=positive_int, default=1, help="images per batch")
    p.add_argument("--load_size", type=positive_int, default=286, help="scale images to this size (see --preprocess)")
    p.add_argument("--crop_size", type=positive_int, default=256, help="then crop them to this size")
    p.add_argument("--max_dataset_size", type=non_negative_float, default=float("inf"),
                   help="read at most this many images of each folder")
    p.add_argument("--preprocess", default="resize_and_crop", choices=PREPROCESS_MODES,
                   help="resize_and_crop: resize to --load_size, then crop --crop_size; crop: crop only; "
                        "scale_width: scale the width to --load_size (and_crop: then crop); none: round each side "
                        "to a multiple of 4")
    p.add_argument("--no_flip", action="store_true", help="do not flip images left-right at random")
    p.add_argument("--display_winsize", type=positive_int, default=256, help="width of the images on the HTML pages")
    p.add_argument("--epoch", default="latest",
                   help="which checkpoint to load: latest, an epoch number or another saved prefix")
    p.add_argument("--load_iter", type=non_negative_int, default=0,
                   help="> 0: load the iter_N checkpoint instead of --epoch")
    p.add_argument("--verbose", action="store_true", help="print every network's layers")
    p.add_argument("--suffix", default="",
                   help="append _SUFFIX to --name, its {fields} filled with option values, e.g. {netG}_bs{batch_size}")
    p.add_argument("--seed", type=int, default=None,
                   help="seeds every random draw; a run without it picks one and records it (fastp2p)")
    p.add_argument("--worker_start", default="spawn", choices=WORKER_START_METHODS,
                   help="how the torch loader's --num_threads workers start (fastp2p): spawn inherits nothing from "
                        "the trainer; fork (the reference's) starts faster but can hang in state inherited from "
                        "the trainer's threads (DALI, Triton, TensorBoard, CUDA)")
    return p


def add_train_options(parser):
    """Reference TrainOptions."""
    p = parser
    p.add_argument("--display_freq", type=positive_int, default=400,
                   help="every N images, show the current results (TensorBoard; the HTML page: --update_html_freq)")
    p.add_argument("--update_html_freq", type=positive_int, default=1000,
                   help="every N images, also save the results shown to the HTML page (and at each epoch's first)")
    p.add_argument("--print_freq", type=positive_int, default=100, help="every N images, print the losses")
    p.add_argument("--no_html", action="store_true", help="do not save results to CHECKPOINTS_DIR/NAME/web")
    p.add_argument("--save_latest_freq", type=positive_int, default=5000,
                   help="every N images, save the latest checkpoint")
    p.add_argument("--save_epoch_freq", type=positive_int, default=5,
                   help="every N epochs, keep that epoch's checkpoint")
    p.add_argument("--save_by_iter", action="store_true",
                   help="save the --save_latest_freq checkpoints as iter_N instead of overwriting latest")
    p.add_argument("--save_epoch_state", action="store_true",
                   help="keep a training state (optimizer moments: twice the networks' size) with every epoch "
                        "snapshot too, so --continue_train --epoch N resumes exactly (fastp2p; by default only "
                        "latest and iter_* have one)")
    p.add_argument("--continue_train", action="store_true",
                   help="resume from the latest checkpoint (or the one --epoch / --load_iter names)")
    p.add_argument("--epoch_count", type=positive_int, default=1,
                   help="number of the first epoch, from which the epochs and the learning rate schedule count (a "
                        "resume with a training state takes the saved run's)")
    p.add_argument("--phase", default="train", help="the dataset split to read: DATAROOT/PHASE, or PHASEA and PHASEB")
    p.add_argument("--n_epochs", type=non_negative_int, default=100, help="epochs at the initial learning rate")
    p.add_argument("--n_epochs_decay", type=non_negative_int, default=100,
                   help="epochs over which the learning rate then decays to zero")
    p.add_argument("--beta1", type=adam_beta, default=0.5, help="Adam's beta1, the momentum term")
    p.add_argument("--lr", type=finite_non_negative_float, default=0.0002, help="initial Adam learning rate")
    p.add_argument("--gan_mode", default="lsgan", choices=GAN_MODES,
                   help="GAN loss: vanilla (cross-entropy), lsgan (least squares) or wgangp (Wasserstein with "
                        "gradient penalty)")
    p.add_argument("--pool_size", type=non_negative_int, default=50,
                   help="size of the buffer of generated images the discriminator is shown (CycleGAN); 0: none")
    p.add_argument("--lr_policy", default="linear", choices=LR_POLICIES,
                   help="learning rate schedule: linear (constant for --n_epochs, then to zero over "
                        "--n_epochs_decay), step (x0.1 every --lr_decay_iters epochs), plateau or cosine")
    p.add_argument("--lr_decay_iters", type=positive_int, default=50,
                   help="with --lr_policy step: multiply the learning rate by 0.1 every N epochs")
    p.add_argument("--data_loader", default="auto", choices=DATA_LOADERS,
                   help="input pipeline (fastp2p): torch is the reference PIL + DataLoader path; auto picks the "
                        "GPU-resident cache when the set fits, else DALI, else torchvision GPU decode, on a GPU, "
                        "and torch on the CPU")
    add_engine_options(p)
    return p


INFERENCE_SWITCHES = ("amp", "channels_last", "cuda_graph")
"""the engine switches inference takes (with --reference); the others are training's (kernels written for the
backward pass, the optimizer, a step's passes) and are off there"""
INFERENCE_HELP = {"cuda_graph": "replay the generator's forward as one CUDA graph from a static input buffer (a batch "
                                "of another shape, such as the last, runs eagerly)"}


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def add_engine_options(parser, inference=False):
    """fastp2p's fast paths, each behind its own switch. 'auto' turns a path on when running on a GPU
    and off on the CPU, where the plain reference path runs. ``inference``: INFERENCE_SWITCHES alone, the
    others set off, so resolve_engine reads one namespace for both."""
    p = parser.add_argument_group("fast engine (fastp2p)")
    p.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                   help="mixed precision; auto = bf16 where the GPU has it, else fp16 with a GradScaler")
    for name, what in (("channels_last", "channels-last memory format for nets and inputs"),
                       ("fused_kernels", "Triton fused norm + activation and fused GAN/L1 losses"),
                       ("fused_conv", "Triton implicit-GEMM convs that write their norm's statistics and apply the "
                                      "norm + activation before them as they load their input (ResNet, PatchGAN, "
                                      "U-Net convs with a norm); auto stays off until a GPU measurement shows a "
                                      "layer beating cuDNN + the fused norm"),
                       ("fused_adam", "torch.optim.Adam(fused=True) with a tensor learning rate"),
                       ("foreach_cast", "with --amp, cast each network's conv weights in one multi-tensor kernel per "
                                        "forward (and their gradients back in one) instead of a kernel per weight"),
                       ("step_cast", "with --amp, keep low-precision copies of each network's conv weights that one "
                                     "multi-tensor copy rewrites after each optimizer step, so no forward casts "
                                     "weights (checkpoints keep fp32); auto prefers it to --foreach_cast"),
                       ("overlap_optimizer", "step each parameter's Adam as soon as backward has its gradient (on a "
                                             "side stream on a GPU), overlapping the optimizer with the rest of "
                                             "backward; same result as stepping after it; not with fp16 or DDP; auto "
                                             "leaves it off until a GPU measurement shows it pays"),
                       ("batch_passes", "run a network's independent passes of one step as one batch (CycleGAN's "
                                        "generator and identity passes, D's real and fake passes); needs per-sample "
                                        "norms (--norm instance or none)"),
                       ("two_streams", "CycleGAN: update D_A and D_B, each forward and backward, on two CUDA "
                                       "streams at once (they share nothing; at small batches one leaves most of "
                                       "the GPU idle); not with DDP or --overlap_optimizer; auto leaves it off until "
                                       "a GPU measurement shows it pays"),
                       ("cuda_graph", "replay each training iteration as one CUDA graph"),
                       ("cudnn_search_all", "let cudnn.benchmark time every convolution algorithm cuDNN offers "
                                            "(torch.backends.cudnn.benchmark_limit 0) rather than its first 10")):
        if inference and name not in INFERENCE_SWITCHES:
            parser.set_defaults(**{name: "off"})
            continue
        p.add_argument(f"--{name}", default="auto", choices=("auto", "on", "off"),
                       help=INFERENCE_HELP.get(name, what) if inference else what)
    if inference:
        parser.set_defaults(compile=None, adam_kernel="torch", adam_moments="fp32")
    else:
        p.add_argument("--adam_kernel", default="auto", choices=("auto", "torch", "triton"),
                       help="what steps Adam: torch's (fused with --fused_adam), or one Triton kernel per step that "
                            "also writes --step_cast's low-precision weight copies (no separate copy kernel); same "
                            "math and checkpoints; not with --overlap_optimizer; auto = torch until a GPU "
                            "measurement shows triton is faster")
        p.add_argument("--adam_moments", default="fp32", choices=("fp32", "bf16"),
                       help="with --adam_kernel triton: Adam's moments in fp32 (the reference) or bf16 (half their "
                            "memory traffic, rounded moments)")
        p.add_argument("--compile", nargs="?", const="default", default=None, choices=COMPILE_MODES,
                       help="torch.compile every network (instead of CUDA graphs), in torch.compile's mode given "
                            "(--compile alone: its default mode)")
    p.add_argument("--reference", action="store_true",
                   help="the plain reference path: every fast path off, whatever the switches above say")


def add_test_options(parser):
    """Reference TestOptions; load_size defaults to crop_size, so the default test crop is a plain resize."""
    p = parser
    p.add_argument("--results_dir", default="./results/",
                   help="images and their HTML page go to RESULTS_DIR/NAME/PHASE_EPOCH")
    p.add_argument("--aspect_ratio", type=finite_positive_float, default=1.0,
                   help="stretch the saved images: > 1 multiplies their height by it, < 1 their width by its inverse")
    p.add_argument("--phase", default="test", help="the dataset split to read: DATAROOT/PHASE, or PHASEA and PHASEB")
    p.add_argument("--eval", action="store_true", help="eval mode: BatchNorm running stats, no dropout")
    p.add_argument("--num_test", type=positive_int, default=50, help="translate at most this many images")
    p.set_defaults(model="test", load_size=256)
    add_engine_options(p, inference=True)
    return p


def add_monitoring_options(parser, is_train):
    """Where a run reports its progress besides the console and the HTML page."""
    p = parser.add_argument_group("monitoring (fastp2p)")
    p.add_argument("--use_wandb", action="store_true",
                   help="also log losses, learning rate, throughput and metrics to Weights & Biases "
                        "(needs the wandb package)")
    p.add_argument("--wandb_project_name", default="CycleGAN-and-pix2pix", help="wandb project")
    if is_train:
        p.add_argument("--no_tensorboard", action="store_true",
                       help="do not write TensorBoard logs even when tensorboard is installed")
        p.add_argument("--eval_freq", type=non_negative_int, default=0,
                       help="score the generator on the val (else test) split every N epochs: L1/PSNR/SSIM for "
                            "paired data, FID/KID with the metrics extra; 0 = off")


COMPATIBILITY_GROUP = "accepted for compatibility with the reference trainer (no effect)"


def add_compatibility_options(parser):
    """The reference's visdom flags of training: accepted so that its command lines run unchanged, and never read
    (fastp2p writes the HTML page, TensorBoard and wandb logs instead)."""
    p = parser.add_argument_group(COMPATIBILITY_GROUP)
    no_effect = "no effect in fastp2p"
    p.add_argument("--display_ncols", type=int, default=4, help=f"{no_effect}: no visdom display")
    p.add_argument("--display_id", type=int, default=1, help=f"{no_effect}: no visdom display")
    p.add_argument("--display_server", default="http://localhost", help=f"{no_effect}: no visdom server")
    p.add_argument("--display_env", default="main", help=f"{no_effect}: no visdom server")
    p.add_argument("--display_port", type=int, default=8097, help=f"{no_effect}: no visdom server")


def add_model_options(parser, model, is_train):
    """The model's own flags, in a --help section of their own, and its default changes (reference
    modify_commandline_options)."""
    flags = parser.add_argument_group(f"--model {model}")
    if model == "pix2pix":
        parser.set_defaults(norm="batch", netG="unet_256", dataset_mode="aligned")
        if is_train:
            parser.set_defaults(pool_size=0, gan_mode="vanilla")
            flags.add_argument("--lambda_L1", type=finite_non_negative_float, default=100.0,
                               help="weight for L1 loss")
    elif model == "cycle_gan":
        parser.set_defaults(no_dropout=True)
        if is_train:
            flags.add_argument("--lambda_A", type=finite_non_negative_float, default=10.0,
                               help="weight for cycle loss (A -> B -> A)")
            flags.add_argument("--lambda_B", type=finite_non_negative_float, default=10.0,
                               help="weight for cycle loss (B -> A -> B)")
            flags.add_argument("--lambda_identity", type=finite_non_negative_float, default=0.5,
                               help="identity loss weight, relative to lambda_A/lambda_B")
    elif model == "test":
        if is_train:
            raise OptionError("--model test is for python -m fastp2p.test only; train with pix2pix or cycle_gan")
        parser.set_defaults(dataset_mode="single")
        flags.add_argument("--model_suffix", default="", help="loads [epoch]_net_G[model_suffix].pth, e.g. _A")


def flags_of(parser):
    return [flag for action in parser._actions for flag in action.option_strings]


def model_flags(model, is_train):
    """The flags ``model`` adds; none for a model this command does not run."""
    parser = argparse.ArgumentParser(add_help=False)
    try:
        add_model_options(parser, model, is_train)
    except OptionError:
        return []
    return flags_of(parser)


def guess_flags(unrecognized, parser, is_train):
    """' (did you mean --lambda_L1?)' after the unrecognized flags: for each, the closest flag of ``parser`` or of
    another model, whose --model is then named too."""
    flags = [arg.split("=", 1)[0] for arg in unrecognized if arg.startswith("-") and not arg[1:2].isdigit()]
    known = flags_of(parser)
    owners = {flag: model for model in MODELS for flag in model_flags(model, is_train) if flag not in known}
    needs_model, misspelled = [], []
    for flag in flags:
        guess = closest(flag, known + list(owners))
        if guess == flag:
            needs_model.append(f"{flag} needs --model {owners[flag]}")
        elif guess:
            fix = f"--model {owners[guess]} {guess}" if guess in owners else guess
            misspelled.append(fix if len(flags) == 1 else f"{fix} for {flag}")
    notes = needs_model + ([f"did you mean {', '.join(misspelled)}?"] if misspelled else [])
    return f" ({'; '.join(notes)})" if notes else ""


def build_parser(is_train, model, prog=None, add_options=None, add_help=True):
    """``prog`` and ``add_options(parser)``: a command built on the test flags (fastp2p.export) names itself and adds
    its own. ``add_help`` False: a first pass that reads --model, leaving --help to the parser of that model."""
    prog = prog or ("fastp2p.train" if is_train else "fastp2p.test")
    ignored = f" Flags fastp2p accepts but ignores come last, under '{COMPATIBILITY_GROUP}'." if is_train else ""
    parser = FlagParser(
        prog=prog, usage="%(prog)s [--flag VALUE ...]", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
        description=f"The reference trainer's flags, and fastp2p's own, with the defaults of --model {model}: "
                    f"--model X --help lists model X's own flags and defaults.{ignored}")
    add_base_options(parser)
    if is_train:
        add_train_options(parser)
    else:
        add_test_options(parser)
    if add_options is not None:
        add_options(parser)
    if model is not None:
        add_model_options(parser, model, is_train)
    add_monitoring_options(parser, is_train)
    if is_train:
        add_compatibility_options(parser)
    return parser


def parse_gpu_ids(text):
    try:
        ids = [int(part) for part in str(text).split(",") if part.strip() != ""]
    except ValueError:
        raise OptionError(f"--gpu_ids must be comma-separated integers or -1, got {text!r}") from None
    ids = [i for i in ids if i >= 0]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:  # under torchrun two processes would share a GPU, which NCCL refuses at the first all-reduce
        raise OptionError(f"--gpu_ids {text} lists GPU {','.join(map(str, repeated))} more than once: one process "
                          "trains on each listed GPU")
    return ids


def apply_suffix(opt):
    """The reference's name += '_' + suffix.format(**vars(opt)), with a bad field named instead of a KeyError."""
    try:
        opt.name = opt.name + "_" + opt.suffix.format(**vars(opt))
    except KeyError as e:
        raise OptionError(f"--suffix {opt.suffix!r} names no option {e.args[0]!r}; its fields are option names, "
                          f"e.g. {{netG}}_bs{{batch_size}}") from None
    except (IndexError, ValueError, AttributeError, TypeError) as e:
        raise OptionError(f"--suffix {opt.suffix!r} is not a format string of option names: {e}") from None


def check_name(opt):
    """NAME is joined to --checkpoints_dir (and --results_dir): a path in it would write outside them."""
    separators = {"/", os.sep, os.altsep} - {None}
    if (opt.name in ("", ".", "..") or any(sep in opt.name for sep in separators) or "\0" in opt.name
            or os.path.splitdrive(opt.name)[0]):
        given = " (with --suffix applied)" if opt.suffix else ""
        parents = "--checkpoints_dir" if opt.isTrain else "--checkpoints_dir and --results_dir"
        raise OptionError(f"--name {opt.name!r}{given} must be one plain folder name, without '/' and not "
                          f"'.' or '..': it names the run's folder inside {parents}")


def check_options(opt):
    """Reject combinations that would only fail deep inside a run, or that would do nothing."""
    check_name(opt)
    if opt.isTrain:
        last_epoch = opt.n_epochs + opt.n_epochs_decay
        if last_epoch < opt.epoch_count and (last_epoch == 0 or not opt.continue_train):
            raise OptionError(f"nothing to train: epochs run from --epoch_count {opt.epoch_count} up to --n_epochs + "
                              f"--n_epochs_decay = {opt.n_epochs} + {opt.n_epochs_decay} = {last_epoch}")
    if opt.preprocess in ("resize_and_crop", "scale_width_and_crop") and opt.crop_size > opt.load_size:
        raise OptionError(f"--crop_size {opt.crop_size} is larger than --load_size {opt.load_size}; "
                          f"the crop must fit in the resized image")
    if opt.netG == "unet_256" and opt.crop_size < 256 and opt.preprocess != "none":
        raise OptionError(f"--netG unet_256 downsamples 8 times and needs crops of at least 256 pixels; "
                          f"got --crop_size {opt.crop_size} (use --netG unet_128 for 128-pixel crops)")
    if opt.netG == "unet_128" and opt.crop_size < 128 and opt.preprocess != "none":
        raise OptionError(f"--netG unet_128 needs crops of at least 128 pixels; got --crop_size {opt.crop_size}")
    if opt.isTrain and opt.model == "pix2pix" and opt.dataset_mode != "aligned":
        raise OptionError("pix2pix trains on paired images: use --dataset_mode aligned")
    if opt.dataroot is not None and not os.path.isdir(opt.dataroot):
        raise OptionError(f"--dataroot {opt.dataroot} is not a folder")


def parse_options(argv=None, is_train=True, prog=None, add_options=None):
    """Parse ``argv`` (default sys.argv[1:]) into the reference's option namespace (``prog``, ``add_options``: see
    build_parser).

    Raises SystemExit with argparse's message on unknown flags or bad values, like any CLI.
    """
    base = build_parser(is_train, None, prog, add_options, add_help=False)
    known, _ = base.parse_known_args(argv)
    try:
        parser = build_parser(is_train, known.model, prog, add_options)
    except OptionError as e:
        base.error(str(e))
    opt, unrecognized = parser.parse_known_args(argv)
    if unrecognized:
        parser.error(f"unrecognized arguments: {' '.join(unrecognized)}{guess_flags(unrecognized, parser, is_train)}")
    opt.isTrain = is_train
    if not is_train:
        # The reference's test script hard-codes these, and --batch_size 1, which fastp2p leaves to the flag.
        opt.num_threads, opt.serial_batches, opt.no_flip, opt.display_id = 0, True, True, -1
    try:
        if opt.suffix:
            apply_suffix(opt)
        opt.gpu_ids = parse_gpu_ids(opt.gpu_ids)
        check_options(opt)
    except OptionError as e:
        parser.error(str(e))
    opt.parser = parser
    return opt


def format_options(opt):
    """The reference's options table, marking each value that differs from its default."""
    parser = opt.parser
    lines = ["----------------- Options ---------------"]
    for key, value in sorted(vars(opt).items()):
        if key in ("parser", "device"):
            continue
        default = parser.get_default(key)
        if key == "gpu_ids":
            value = ",".join(str(i) for i in value) if value else "-1"
        comment = f"\t[default: {default}]" if default is not None and str(value) != str(default) else ""
        lines.append(f"{key:>25}: {str(value):<30}{comment}")
    lines.append("----------------- End -------------------")
    return "\n".join(lines)


def make_output_folder(flag, root, name):
    """Create root/NAME and write a file there, so that an unwritable --checkpoints_dir or --results_dir stops
    the run now with one line naming the folder and the reason, not with a traceback at its first output."""
    folder = os.path.join(root, name)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise OptionError(f"{flag} {root}: cannot write to {folder}: {e.strerror or e}") from None
    return folder


def save_options(opt):
    """Print the options and write them to checkpoints/NAME/{phase}_opt.txt, as the reference does; inference
    also makes sure that results/NAME can be written before it loads anything."""
    text = format_options(opt)
    print(text)
    folder = make_output_folder("--checkpoints_dir", opt.checkpoints_dir, opt.name)
    with open(os.path.join(folder, f"{opt.phase}_opt.txt"), "w") as f:
        f.write(text + "\n")
    if not opt.isTrain:
        make_output_folder("--results_dir", opt.results_dir, opt.name)


def use_cuda(opt):
    """Pick this process's device from --gpu_ids and say whether it is a GPU.

    One process trains on the first listed id; under torchrun the process of local rank r on gpu_ids[r]. The
    chosen GPU becomes torch's current device, which distributed.init_distributed hands out. Without CUDA a
    request for a GPU warns and falls back to the CPU.
    """
    if not opt.gpu_ids:
        return False
    listed = ",".join(map(str, opt.gpu_ids))
    if not torch.cuda.is_available():
        print(f"warning: --gpu_ids {listed} asks for a GPU but CUDA is not available; "
              f"running on CPU (pass --gpu_ids -1 to say so)")
        return False
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
    if len(opt.gpu_ids) < local_processes:
        raise OptionError(f"--gpu_ids {listed} lists {len(opt.gpu_ids)} GPU(s) for the {local_processes} processes "
                          f"on this machine: give one id per process, e.g. --gpu_ids "
                          f"{','.join(map(str, range(local_processes)))}")
    count = torch.cuda.device_count()
    missing = [str(gpu) for gpu in opt.gpu_ids if gpu >= count]
    if missing:
        raise OptionError(f"--gpu_ids {listed}: no GPU {','.join(missing)} on this machine, which has {count} "
                          f"visible GPU(s), numbered from 0")
    if len(opt.gpu_ids) > local_processes and local_rank == 0:
        print(f"warning: --gpu_ids {listed} lists {len(opt.gpu_ids)} GPUs for {local_processes} process(es), one GPU "
              f"each: GPUs {','.join(map(str, opt.gpu_ids[local_processes:]))} stay idle (start one process per GPU "
              f"with torchrun --nproc_per_node={len(opt.gpu_ids)})")
    torch.cuda.set_device(opt.gpu_ids[local_rank])
    return True
