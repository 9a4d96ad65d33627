"""The errors a user can act on: bad input, a bad config, a missing path, an output that would be overwritten, a busy
or full folder, an unusable checkpoint. The CLI prints these as one line and exits 2; any other exception is a bug in
connectorlab and keeps its traceback. Each subclasses the built-in exception it refines, so `except ValueError`
callers keep working."""
from __future__ import annotations


class ConnectorlabError(Exception):
    """Base of every user-facing error."""


class InputError(ConnectorlabError, ValueError):
    """A file, record or field the user gave is unusable; the message names it."""


class ConfigError(InputError):
    """A config value outside its allowed range or of the wrong type; names the key."""


class MissingPathError(ConnectorlabError, FileNotFoundError):
    """A path the user named (or that a run needs) does not exist."""


class NotAFileError(ConnectorlabError, IsADirectoryError):
    """A folder where a file was expected."""


class NotAFolderError(ConnectorlabError, NotADirectoryError):
    """A file where a folder was expected."""


class OutputExistsError(ConnectorlabError, FileExistsError):
    """Writing would replace something the user did not ask to replace."""


class BusyError(ConnectorlabError, RuntimeError):
    """Another process is writing the same output folder."""


class DiskFullError(ConnectorlabError, OSError):
    """No space left while writing: names the folder and how much room is left."""


class UnreadableImageError(InputError, OSError):
    """An image file that does not decode (missing, truncated, not an image)."""


class CheckpointError(InputError):
    """A checkpoint that cannot be resumed from (corrupt, truncated, written by another setting)."""


class TrainingDiverged(ConnectorlabError, FloatingPointError):
    """A non-finite loss: the step and the last good checkpoint are named."""
