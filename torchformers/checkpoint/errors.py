"""The one error type of the checkpoint package: it always names the file and, where one is involved, the tensor."""

from __future__ import annotations

from pathlib import Path

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint could not be read, written or matched against what a model expects."""

    def __init__(self, path: str | Path | None, message: str, *, tensor: str | None = None) -> None:
        self.path = None if path is None else str(path)
        self.tensor = tensor
        where = f"checkpoint {self.path}" if self.path else "checkpoint"
        if tensor is not None:
            where += f", tensor {tensor!r}"
        super().__init__(f"{where}: {message}")
