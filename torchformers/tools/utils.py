"""MindFormers' `mindformers/tools/utils.py` helpers that user scripts import: `str2bool`, `check_file`.

`str2bool` is `torchformers.utils.str2bool` (one implementation); `check_file(file_path, file_type)`
checks that a path names an existing regular file, as MindFormers' helper of that name does, and
raises `ConfigError` naming the path otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchformers.errors import ConfigError
from torchformers.utils import str2bool

__all__ = ["check_file", "str2bool"]


def check_file(file_path: str | os.PathLike, file_type: str | None = None) -> None:
    """Raise `ConfigError` unless `file_path` is an existing file; `file_type` (e.g. "yaml") names it in the message."""
    what = f"{file_type} file" if file_type else "file"
    path = Path(file_path)
    if not path.exists():
        raise ConfigError(f"{what} {str(file_path)!r} does not exist; expected an existing {what}")
    if not path.is_file():
        raise ConfigError(f"{what} {str(file_path)!r} is not a regular file (a folder?); expected a {what}")
