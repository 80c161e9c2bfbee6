"""The data set loaders' error: files that are missing or not in the expected format."""

from __future__ import annotations

from torchformers.errors import DataError

__all__ = ["DatasetFormatError"]


class DatasetFormatError(DataError):
    """The data set files are missing or not in the expected format."""
