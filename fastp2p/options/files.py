"""The options table a run writes into its folder (``train_opt.txt``, ``test_opt.txt``, as the reference writes
them) and reads back from a trained run's folder."""

import os
import re
import tempfile

from fastp2p.errors import OptionError
from fastp2p.output_files import replace_output

OPTIONS_LINE = re.compile(r"^\s*(\w+): (.*?)(?:\t\[default: .*\])?$")


def format_options(opt):
    """The reference's options table, marking each value that differs from its default."""
    lines = ["----------------- Options ---------------"]
    for key, value in sorted(opt.values().items()):
        default = opt.defaults.get(key)
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
    replace_output(os.path.join(folder, f"{opt.phase}_opt.txt"), text + "\n")
    if not opt.isTrain:
        make_output_folder("--results_dir", opt.results_dir, opt.name)


def read_train_options(folder):
    """name -> value text of the ``train_opt.txt`` the trainer wrote into ``folder``."""
    with open(os.path.join(folder, "train_opt.txt")) as f:
        return {m[1]: m[2].strip() for m in map(OPTIONS_LINE.match, f.read().splitlines()) if m}
