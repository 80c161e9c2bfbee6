"""The preprocessing's error: bad input or arguments of `llama_preprocess` (a `DataError`)."""

from __future__ import annotations

from torchformers.errors import DataError

__all__ = ["PreprocessError"]


class PreprocessError(DataError):
    """Bad input or arguments; the message names the file, line or argument."""
