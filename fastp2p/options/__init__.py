"""Command-line options: the reference trainer's flags verbatim, plus fastp2p's own, as frozen ``Options``.

groups.py declares every flag (one field of its group's dataclass); parser.py builds the parser from them and
parses; checks.py rejects what would fail later; config.py is the Options object; files.py the options table.
"""

from fastp2p.options.config import Options
from fastp2p.options.files import format_options, read_train_options, save_options
from fastp2p.options.groups import MODELS
from fastp2p.options.parser import build_parser, parse_options

__all__ = ["MODELS", "Options", "build_parser", "format_options", "parse_options", "read_train_options",
           "save_options"]
