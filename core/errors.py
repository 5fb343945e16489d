"""The errors a user can fix: a command line prints them as one ``error: ...`` line and exits with code 2.

Anything else is a bug and keeps its traceback. Each subclass also derives from the builtin that code
catching the old, narrower type expects (``ValueError`` for bad values, ``FileNotFoundError`` for missing data).
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input: the message is one line that names the culprit (a config key, a file, a checkpoint)."""


class ConfigError(UserError, ValueError):
    """A bad config value or command-line argument."""


class DataError(UserError, ValueError):
    """Empty or malformed data: the message names the file (and line) or the hub dataset."""


class MissingDataError(DataError, FileNotFoundError):
    """A data file, tokenizer or hub dataset that cannot be found or reached."""


class MissingFieldError(DataError, KeyError):
    """A record without the field the config names (also a KeyError, as a dict lookup would raise)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(UserError, ValueError):
    """A checkpoint that is missing, damaged or written for another model/tokenizer."""


class UnsupportedModelError(UserError, ValueError):
    """A model whose architecture a tool cannot work with (e.g. no decoder blocks where the family table looks)."""


class NonFiniteLossError(RuntimeError):
    """Training diverged (NaN/Inf loss). Not a user error: train.py exits with code 1, keeping checkpoints and logs."""


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (KeyError quotes its argument; multi-line messages keep their first line)."""
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    lines = str(msg).strip().splitlines()
    return lines[0] if lines else type(e).__name__
