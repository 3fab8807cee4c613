"""The checks made once the flags parse: values that would only fail deep inside a run, or do nothing."""

import os

from fastp2p.errors import OptionError


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
