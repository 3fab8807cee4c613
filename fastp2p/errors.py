"""The errors a user can cause, each said in one line by the command that meets it (exit code 2), never a traceback.

They live here, apart from the code that raises them, so that any module can raise or catch one without importing
the option parser, the checkpoint code or the data pipeline.
"""


class UserError(Exception):
    """Input that fastp2p cannot work with: the message says what is wrong and what to do."""


class OptionError(UserError, ValueError):
    """A flag value, or a combination of flags, that the trainer cannot work with."""


class DatasetError(UserError, ValueError):
    """The dataset on disk cannot be used as asked: the message says what is wrong and where."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable, refused, or made for another network."""


class MetricError(UserError):
    """Input the metrics cannot score, or a metric that cannot run here."""


class NonFiniteError(UserError, RuntimeError):
    """A loss or a weight became NaN or infinite; no checkpoint is written from that state."""


class OutputError(UserError):
    """Where fastp2p would write is not a plain file or folder of its own: a link planted in a run's folder (writing
    through it would overwrite what it points at), a FIFO or a device."""


class StoppedOnMainRank(UserError):
    """A decision rank 0 takes for the whole job (the run lock, the resume point) failed there: rank 0 says why, the
    other ranks follow it out without saying it again."""


def first_line(error):
    """An exception's message in one line, or its type's name when it has none (an empty file's EOFError)."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


class DownloadError(UserError):
    """A dataset or pretrained model that cannot be fetched or unpacked: a dead link, an unreachable server, a
    download cut short, an archive that is corrupt or would write outside its folder."""
