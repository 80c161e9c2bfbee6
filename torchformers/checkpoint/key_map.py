"""Parameter-name maps between checkpoint layouts: one table per model, used in both directions.

A table maps a source name pattern to a native (MindFormers) name pattern; `{}` stands for the
layer index. Names that match no pattern are reported, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from torchformers.errors import CheckpointError

__all__ = ["KeyMap", "KeyMapError"]


class KeyMapError(CheckpointError, KeyError):
    """A parameter name has no entry in the model's key map (a `KeyError` for the callers that look names up)."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class KeyMap:
    """A bijective rename table between an external layout (e.g. Hugging Face) and the native one."""

    def __init__(self, table: Mapping[str, str], name: str = "") -> None:
        self.name = name
        self.table = dict(table)
        self._forward = [(self._compile(src), dst) for src, dst in self.table.items()]
        self._reverse = [(self._compile(dst), src) for src, dst in self.table.items()]

    @staticmethod
    def _compile(pattern: str) -> re.Pattern:
        return re.compile("^" + re.escape(pattern).replace(r"\{\}", r"(\d+)") + "$")

    @staticmethod
    def _apply(rules, key: str) -> str | None:
        for regex, target in rules:
            match = regex.match(key)
            if match:
                return target.format(*match.groups())
        return None

    def to_native(self, key: str) -> str:
        out = self._apply(self._forward, key)
        if out is None:
            raise KeyMapError(f"{self.name} key map: no native name for {key!r}")
        return out

    def from_native(self, key: str) -> str:
        out = self._apply(self._reverse, key)
        if out is None:
            raise KeyMapError(f"{self.name} key map: no external name for native {key!r}")
        return out

    def is_external(self, key: str) -> bool:
        return self._apply(self._forward, key) is not None

    def is_native(self, key: str) -> bool:
        return self._apply(self._reverse, key) is not None

    def rename_to_native(self, keys: Iterable[str]) -> dict[str, str]:
        return {k: self.to_native(k) for k in keys}

    def rename_from_native(self, keys: Iterable[str]) -> dict[str, str]:
        return {k: self.from_native(k) for k in keys}
