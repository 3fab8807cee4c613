"""The checks made once the flags parse: values that would only fail deep inside a run, or do nothing."""

import os

from fastp2p.data.datasets import IMAGE_MODES
from fastp2p.errors import OptionError
from fastp2p.models import find_model


def parse_gpu_ids(text):
    """--gpu_ids as a tuple of device numbers (none for -1, the CPU)."""
    try:
        ids = [int(part) for part in str(text).split(",") if part.strip() != ""]
    except ValueError:
        raise OptionError(f"--gpu_ids must be comma-separated integers or -1, got {text!r}") from None
    ids = [i for i in ids if i >= 0]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:  # under torchrun two processes would share a GPU, which NCCL refuses at the first all-reduce
        raise OptionError(f"--gpu_ids {text} lists GPU {','.join(map(str, repeated))} more than once: one process "
                          "trains on each listed GPU")
    return tuple(ids)


def apply_suffix(values):
    """The reference's name + '_' + suffix.format(**options), with a bad field named instead of a KeyError."""
    suffix = values["suffix"]
    try:
        return values["name"] + "_" + suffix.format(**values)
    except KeyError as e:
        raise OptionError(f"--suffix {suffix!r} names no option {e.args[0]!r}; its fields are option names, "
                          f"e.g. {{netG}}_bs{{batch_size}}") from None
    except (IndexError, ValueError, AttributeError, TypeError) as e:
        raise OptionError(f"--suffix {suffix!r} is not a format string of option names: {e}") from None


def leaves_its_folder(text, whole=True):
    """Whether ``text``, joined to a folder (alone when ``whole``, else inside a longer name), names something
    outside it: a separator, a NUL, a drive, and as a whole name '', '.' or '..'."""
    separators = {"/", os.sep, os.altsep} - {None}
    return (any(sep in text for sep in separators) or "\0" in text or bool(os.path.splitdrive(text)[0])
            or (whole and text in ("", ".", "..")))


def check_name(opt):
    """NAME is joined to --checkpoints_dir (and --results_dir): a path in it would write outside them."""
    if leaves_its_folder(opt.name):
        given = " (with --suffix applied)" if opt.suffix else ""
        parents = "--checkpoints_dir" if opt.isTrain else "--checkpoints_dir and --results_dir"
        raise OptionError(f"--name {opt.name!r}{given} must be one plain folder name, without '/' and not "
                          f"'.' or '..': it names the run's folder inside {parents}")


def check_path_parts(opt):
    """The other flags that become parts of paths cannot leave the folder they belong in: --phase names the split
    DATAROOT/PHASE and the PHASE_opt.txt of the run's folder, --epoch and --model_suffix name the network files
    EPOCH_net_GSUFFIX.pth in it, and fastp2p.test writes to RESULTS_DIR/NAME/PHASE_EPOCH."""
    check_name(opt)
    if leaves_its_folder(opt.phase):
        raise OptionError(f"--phase {opt.phase!r} must be one plain folder name, without '/' and not '', '.' or "
                          f"'..': it names the split DATAROOT/PHASE (or PHASEA and PHASEB) to read")
    if opt.epoch == "" or leaves_its_folder(opt.epoch, whole=False):
        raise OptionError(f"--epoch {opt.epoch!r} must be a checkpoint prefix without '/' (latest, an epoch number, "
                          f"iter_N): it names the files EPOCH_net_G.pth inside the run's folder")
    suffix = getattr(opt, "model_suffix", "")
    if leaves_its_folder(suffix, whole=False):
        raise OptionError(f"--model_suffix {suffix!r} cannot hold '/': it names the file EPOCH_net_G{suffix}.pth inside "
                          f"the run's folder")


def check_image_channels(opt):
    """Images are read as RGB, or as grayscale for a side of 1 channel: no other channel count can come from them.
    Another dataset mode makes its channels itself (colorization: L and ab)."""
    if opt.dataset_mode not in IMAGE_MODES:
        return
    sides = [("--input_nc", opt.input_nc), ("--output_nc", opt.output_nc)]
    if opt.dataset_mode == "single":  # one side is read: the input's, the output's with BtoA
        sides = sides[1:] if opt.direction == "BtoA" else sides[:1]
    for flag, channels in sides:
        if channels not in (1, 3):
            raise OptionError(f"{flag} {channels}: images are read as RGB (3 channels) or, with 1, as grayscale, so "
                              f"--dataset_mode {opt.dataset_mode} cannot give {channels} channels")


def check_options(opt):
    """Reject combinations that would only fail deep inside a run, or that would do nothing."""
    check_path_parts(opt)
    check_image_channels(opt)
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
    if opt.isTrain and opt.accum_steps > 1 and not find_model(opt.model).accumulates():
        raise OptionError(f"--accum_steps {opt.accum_steps}: --model {opt.model} takes one optimizer step per batch "
                          f"(it defines no optimize_accumulated); use --accum_steps 1")
    if opt.isTrain and opt.model == "pix2pix" and opt.dataset_mode != "aligned":
        raise OptionError("pix2pix trains on paired images: use --dataset_mode aligned")
    if opt.dataroot is not None and not os.path.isdir(opt.dataroot):
        raise OptionError(f"--dataroot {opt.dataroot} is not a folder")
