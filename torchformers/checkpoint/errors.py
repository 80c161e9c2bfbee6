"""The checkpoint package's error: `torchformers.errors.CheckpointError`, named here for its users."""

from torchformers.errors import CheckpointError

__all__ = ["CheckpointError"]
