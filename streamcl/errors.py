"""One exception type for bad user input: the CLI prints its message and exits with code 2."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, Path]

__all__ = ["StreamclError", "ConfigError", "DatasetError", "CheckpointError", "missing_extra"]


class StreamclError(Exception):
    """Bad input a user can fix (config, dataset tree, checkpoint, missing extra).

    The message must name the file, key or path at fault and say how to fix it;
    ``streamcl`` prints it without a traceback and exits with code 2.
    """

    exit_code = 2


class ConfigError(StreamclError, ValueError):
    """An experiment YAML (or a ``-o`` override) that does not validate."""

    def __init__(self, message: str, *, file: Optional[PathLike] = None, key: Optional[str] = None):
        where = ""
        if file is not None:
            where += f"{file}"
        if key:
            where += f"{': ' if where else ''}{key}"
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.key = key
        self.detail = message


class DatasetError(StreamclError):
    """A missing or malformed dataset tree, index or image."""


class CheckpointError(StreamclError):
    """A checkpoint that cannot be read or does not match the experiment."""


def missing_extra(module: str, extra: str) -> StreamclError:
    """Error for an optional dependency that is not installed, naming the pip extra to add."""
    return StreamclError(
        f"the optional dependency '{module}' is not installed; "
        f"install it with: pip install 'streamcl[{extra}]'"
    )
