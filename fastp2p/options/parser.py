"""The command line: the reference trainer's flags verbatim, plus fastp2p's own, parsed into frozen Options.

Parsing follows the reference's order so that defaults come out the same: the flags are read first, the chosen
model then adds its own flags and changes defaults (its class's ``modify_commandline_options``: ``--model pix2pix``
switches norm, netG, dataset_mode, pool_size and gan_mode), then the chosen dataset mode's class does the same where
it has that method (colorization sets input_nc 1 and output_nc 2), and a final strict parse rejects unknown flags.
A model or dataset mode that is not a built-in is a user's class, found by fastp2p.extensions.
"""

import argparse
import dataclasses
import difflib

from fastp2p.errors import OptionError
from fastp2p.data.modes import find_dataset
from fastp2p.models import MODELS, find_model
from fastp2p.options.checks import apply_suffix, check_options, parse_gpu_ids
from fastp2p.options.config import build_options
from fastp2p.options.groups import COMPATIBILITY, ENGINE, GROUPS, INFERENCE_HELP
from fastp2p.options.inherit import from_saved, given_flags, resumed_value

TEST_FIXES = dict(num_threads=0, serial_batches=True, no_flip=True)
"""what the reference's test script hard-codes (and --batch_size 1, which fastp2p leaves to the flag)"""


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


def add_flags(parser, command):
    """Every field of Options' groups that ``command`` takes, as a flag in its help section."""
    sections = {}
    for cls in GROUPS.values():
        for field in dataclasses.fields(cls):
            meta = field.metadata
            if meta and command not in meta["commands"] and meta["section"] == ENGINE:
                parser.set_defaults(**{field.name: meta["test_default"]})  # listed in test_opt.txt, fixed off
            if not meta or command not in meta["commands"]:
                continue
            section = meta["section"]
            target = parser if section is None else sections.setdefault(section, parser.add_argument_group(section))
            help = INFERENCE_HELP.get(field.name, meta["help"]) if command == "test" else meta["help"]
            default = field.default if command == "train" else meta["test_default"]
            target.add_argument(f"--{field.name}", default=default, help=help, **meta["argparse"])


def add_model_flags(parser, model, is_train):
    """The model's own flags, in a --help section of their own, and its default changes (the reference's
    modify_commandline_options)."""
    find_model(model).modify_commandline_options(parser.add_argument_group(f"--model {model}"), is_train)


def add_dataset_flags(parser, dataset_mode, is_train):
    """The dataset mode's own flags and default changes, where its class has modify_commandline_options (the
    reference's datasets may)."""
    modify = getattr(find_dataset(dataset_mode), "modify_commandline_options", None)
    if modify is not None:
        modify(parser.add_argument_group(f"--dataset_mode {dataset_mode}"), is_train)


def flags_of(parser):
    return [flag for action in parser._actions for flag in action.option_strings]


def model_flags(model, is_train):
    """The flags ``model`` adds; none for a model this command does not run."""
    parser = argparse.ArgumentParser(add_help=False)
    try:
        add_model_flags(parser, model, is_train)
    except OptionError:
        return []
    return flags_of(parser)


def guess_flags(unrecognized, parser, is_train):
    """' (did you mean --lambda_L1?)' after the unrecognized flags: for each, the closest flag of ``parser`` or of
    another model, whose --model is then named too."""
    flags = [arg.split("=", 1)[0] for arg in unrecognized if arg.startswith("-") and not arg[1:2].isdigit()]
    known = flags_of(parser)
    owners = {}
    for model in MODELS:  # the first model that has a flag names it (pix2pix before colorization, its subclass)
        for flag in model_flags(model, is_train):
            if flag not in known:
                owners.setdefault(flag, model)
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


def build_parser(is_train, model, prog=None, add_options=None, add_help=True, dataset_mode=None):
    """``prog`` and ``add_options(parser)``: a command built on the test flags (fastp2p.export) names itself and adds
    its own. ``add_help`` False: a first pass that reads --model, leaving --help to the parser of that model.
    ``dataset_mode``: also that mode's own flags (add_dataset_flags)."""
    command = "train" if is_train else "test"
    prog = prog or f"fastp2p.{command}"
    ignored = f" Flags fastp2p accepts but ignores come last, under '{COMPATIBILITY}'." if is_train else ""
    parser = FlagParser(
        prog=prog, usage="%(prog)s [--flag VALUE ...]", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        add_help=add_help,
        description=f"The reference trainer's flags, and fastp2p's own, with the defaults of --model {model}: "
                    f"--model X --help lists model X's own flags and defaults.{ignored}")
    add_flags(parser, command)
    if add_options is not None:
        add_options(parser)
    if model is not None:
        add_model_flags(parser, model, is_train)
    if dataset_mode is not None:
        add_dataset_flags(parser, dataset_mode, is_train)
    return parser


def parse_options(argv=None, is_train=True, prog=None, add_options=None):
    """Parse ``argv`` (default sys.argv[1:]) into Options (``prog``, ``add_options``: see build_parser).

    Raises SystemExit with argparse's message on unknown flags or bad values, like any CLI.
    """
    base = build_parser(is_train, None, prog, add_options, add_help=False)
    known, _ = base.parse_known_args(argv)
    try:
        given = given_flags(base, argv)
        model = resumed_value(known, "model", given, is_train)
        with_model = build_parser(is_train, model, prog, add_options, add_help=False)
        dataset_mode = resumed_value(with_model.parse_known_args(argv)[0], "dataset_mode", given, is_train,
                                     namespace=known)  # the model may change its default; a resume keeps its own
        parser = build_parser(is_train, model, prog, add_options, dataset_mode=dataset_mode)
    except OptionError as e:
        base.error(str(e))
    namespace, unrecognized = parser.parse_known_args(argv)
    if unrecognized:
        parser.error(f"unrecognized arguments: {' '.join(unrecognized)}{guess_flags(unrecognized, parser, is_train)}")
    namespace.model = model  # the resumed run's, when --continue_train names none
    try:
        values = from_saved(parser, argv, known, vars(namespace), is_train)
    except OptionError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    if not is_train:
        values.update(TEST_FIXES)
    defaults = {action.dest: action.default for action in parser._actions if action.dest != "help"}
    defaults.update(parser._defaults)
    try:
        if values["suffix"]:
            values["name"] = apply_suffix(values)
        values["gpu_ids"] = parse_gpu_ids(values["gpu_ids"])
        opt = build_options(values, "train" if is_train else "test", defaults, sorted([*defaults, "isTrain"]))
        check_options(opt)
    except OptionError as e:
        parser.error(str(e))
    return opt
