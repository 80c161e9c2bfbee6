"""The one error tree: every failure a user can cause is a `TorchformersError`.

Each command-line program catches `TorchformersError` and prints it as one line (`error: ...`, exit
status 2; the traceback with `TORCHFORMERS_DEBUG=1`). The branches say what was wrong:

    TorchformersError
    ├── ConfigError        a YAML file, a key, a command-line argument or a config value
    │   └── RegistryError  a `type:` name, `auto_register` or a registration
    ├── CheckpointError    a weights file or folder, or its fit to a model
    ├── DataError          a data set, a preprocessing input or output
    ├── TokenizerError     a tokenizer file or a text that cannot be encoded
    ├── AssetError         a file fetched from a package registry
    └── TrainingError      a run that cannot go on (a non-finite loss)

The classes also derive from the built-in exception their callers caught before (`ValueError`,
`RuntimeError`), so `except ValueError` keeps working.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = [
    "AssetError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "RegistryError",
    "TokenizerError",
    "TorchformersError",
    "TrainingError",
    "run_cli",
]


class TorchformersError(Exception):
    """Base of every error a user's input can cause; programs print it as one line."""


class ConfigError(TorchformersError, ValueError):
    """A configuration file, key, argument or value is wrong; the message says where and what was expected."""


class RegistryError(ConfigError):
    """A registry lookup, registration or `auto_register` failed because of the user's input."""


class CheckpointError(TorchformersError, ValueError):
    """A checkpoint could not be read or written, or does not fit the model.

    `CheckpointError(path, message, tensor=name)` names the file and tensor in the message;
    `CheckpointError(message)` is for failures that concern no single file.
    """

    def __init__(self, path_or_message: str | Path | None, message: str | None = None, *, tensor: str | None = None):
        if message is None:  # CheckpointError(message)
            self.path, self.tensor = None, tensor
            super().__init__(str(path_or_message) if tensor is None else f"tensor {tensor!r}: {path_or_message}")
            return
        self.path = None if path_or_message is None else str(path_or_message)
        self.tensor = tensor
        where = f"checkpoint {self.path}" if self.path else "checkpoint"
        if tensor is not None:
            where += f", tensor {tensor!r}"
        super().__init__(f"{where}: {message}")


class DataError(TorchformersError, ValueError):
    """A data set or a preprocessing input/output is malformed; the message names the file and record."""


class TokenizerError(TorchformersError, ValueError):
    """A tokenizer file is missing or malformed, or a tokenizer cannot do what was asked."""


class AssetError(TorchformersError, RuntimeError):
    """An asset could not be fetched or failed its check."""


class TrainingError(TorchformersError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN or Inf)."""


def run_cli(main, *args, errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run `main(*args)`; a `TorchformersError` (or one of `errors`) becomes one line on stderr and exit 2.

    Returns `main`'s result when it is an exit status (an int), else 0.

    `TORCHFORMERS_DEBUG=1` re-raises instead, to show the traceback.
    """
    try:
        result = main(*args)
    except (TorchformersError, *errors) as err:
        if os.environ.get("TORCHFORMERS_DEBUG") == "1":
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        print("(set TORCHFORMERS_DEBUG=1 to see the traceback)", file=sys.stderr)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
