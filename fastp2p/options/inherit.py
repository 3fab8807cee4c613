"""The flags a resumed or tested run takes from its folder's ``train_opt.txt``, so that they need not be typed again.

``--continue_train`` takes the model, its networks' flags and the data flags; ``fastp2p.test`` takes the
generator's flags and the data flags a test reads (and the data folder when it runs the trained model itself). A
flag given on the command line wins; an architecture flag given with another value than the run trained with is
refused in one line naming both, as the checkpoint would not load (or would load into another network). The file is
the reference's table too, so a run of the reference resumes and tests the same way.
"""

import argparse
import os

from fastp2p.distributed import print_main
from fastp2p.errors import OptionError
from fastp2p.options.checks import apply_suffix
from fastp2p.options.files import read_train_options

GENERATOR_FLAGS = ("netG", "ngf", "norm", "no_dropout", "input_nc", "output_nc")
DISCRIMINATOR_FLAGS = ("netD", "ndf", "n_layers_D")
RESUMED_DATA_FLAGS = ("dataroot", "dataset_mode", "direction", "load_size", "crop_size", "preprocess", "no_flip",
                      "max_dataset_size", "batch_size", "accum_steps", "serial_batches")
TESTED_DATA_FLAGS = ("direction", "crop_size", "preprocess")
SAME_MODEL_TEST_FLAGS = ("dataroot", "dataset_mode")  # a test of the trained model itself reads the trained set


def run_folder(namespace):
    """checkpoints_dir/NAME of a parsed namespace (NAME with its --suffix, when that formats); None when it does not."""
    values = vars(namespace)
    try:
        name = apply_suffix(values) if values.get("suffix") else values["name"]
    except OptionError:
        return None
    return os.path.join(values["checkpoints_dir"], name)


def saved_options(namespace, is_train):
    """(folder, name -> value text of its train_opt.txt) for a --continue_train run or a test, else (None, {})."""
    if is_train and not namespace.continue_train:
        return None, {}
    folder = run_folder(namespace)
    if folder is None or not os.path.isfile(os.path.join(folder, "train_opt.txt")):
        return None, {}
    try:
        return folder, read_train_options(folder)
    except (OSError, UnicodeDecodeError):
        return None, {}  # an unreadable table: the flags as given, as before this file was read


def given_flags(parser, argv):
    """The option names given on the command line ``argv`` (abbreviations resolved as argparse resolves them)."""
    saved = [(action, action.default) for action in parser._actions]
    defaults = parser._defaults
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        parser._defaults = {}
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
        parser._defaults = defaults
    return set(vars(namespace))


def typed(parser, key, text, folder):
    """The saved text of flag ``key`` as the parser would have parsed it."""
    action = next(action for action in parser._actions if action.dest == key)
    if isinstance(action, argparse._StoreTrueAction):
        return text == "True"
    if text == "None" and action.default is None:
        return None
    try:
        value = action.type(text) if action.type else text
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        value = None
    if value is None or (action.choices and value not in action.choices):
        raise OptionError(f"{os.path.join(folder, 'train_opt.txt')} holds {key}: {text}, not a value of --{key}; "
                          f"give --{key} on the command line")
    return value


def resumed_value(parsed, key, given, is_train, namespace=None):
    """--model or --dataset_mode, which choose the flags the parser has: for a --continue_train run that gives none,
    the one it trained with, else ``parsed``'s. ``namespace``: where the run's folder is read from, if not ``parsed``."""
    if not is_train or key in given:
        return getattr(parsed, key)
    _, saved = saved_options(namespace or parsed, is_train)
    return saved.get(key, getattr(parsed, key))


def inherited_flags(values, model):
    """The flags this command takes from train_opt.txt, and those among them a conflicting value refuses."""
    if values["isTrain"]:
        return GENERATOR_FLAGS + DISCRIMINATOR_FLAGS + RESUMED_DATA_FLAGS, GENERATOR_FLAGS + DISCRIMINATOR_FLAGS
    same_model = values["model"] == model
    return GENERATOR_FLAGS + TESTED_DATA_FLAGS + (SAME_MODEL_TEST_FLAGS if same_model else ()), GENERATOR_FLAGS


def shown(key, value):
    """A flag as typed: ``--ngf 8``, ``--no_dropout``; a switch off as ``no --no_dropout``."""
    return f"--{key}" if value is True else f"no --{key}" if value is False else f"--{key} {value}"


def from_saved(parser, argv, namespace, values, is_train):
    """``values`` (the parsed flags) with the flags a resume or a test takes from train_opt.txt (see the module doc).

    The test of one CycleGAN generator in the B-to-A direction (``--model test --model_suffix _B``) swaps the saved
    --input_nc and --output_nc, as G_B was built with them swapped."""
    folder, saved = saved_options(namespace, is_train)
    if not saved:
        return values
    flags, architecture = inherited_flags({**values, "isTrain": is_train}, saved.get("model"))
    if not is_train and values.get("model_suffix") == "_B" and "input_nc" in saved and "output_nc" in saved:
        saved = {**saved, "input_nc": saved["output_nc"], "output_nc": saved["input_nc"]}
    given = given_flags(parser, argv)
    values = dict(values)
    taken = [f"--model {values['model']}"] if is_train and "model" not in given and "model" in saved else []
    for key in flags:
        if key not in saved or key not in values:
            continue
        value = typed(parser, key, saved[key], folder)
        if key not in given:
            if value != values[key]:
                taken.append(shown(key, value))
            values[key] = value
        elif key in architecture and value != values[key]:
            raise OptionError(f"{shown(key, values[key])} conflicts with the run in {folder}, trained with "
                              f"{shown(key, value)} (its train_opt.txt): leave --{key} out to use the run's")
    if not is_train and "crop_size" not in given and "load_size" not in given and "crop_size" in saved:
        values["load_size"] = values["crop_size"] if values["preprocess"] == "resize_and_crop" \
            else typed(parser, "load_size", saved.get("load_size", str(values["load_size"])), folder)
    if taken:
        print_main(f"from {os.path.join(folder, 'train_opt.txt')}: {' '.join(taken)}")
    return values
