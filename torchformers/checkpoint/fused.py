"""Fused parameters (MindFormers' `qkv_concat`): one checkpoint tensor that holds several model parameters.

MindFormers' Llama with `qkv_concat: True` stores `attention.w_qkv` (q, k and v projections) and
`feed_forward.w_gate_hidden` (w1 and w3) as single parameters. The model families here keep separate
parameters, so a fused checkpoint is split when it is loaded and `convert_weight.py --qkv_concat True`
fuses when it writes. A family declares its fused names once (`FusedWeights`, on the model class as
`fused_weights` and on its `ModelSpec`); the row layout of each fused tensor is the family's split / fuse
functions. Patterns use `{}` for the layer index, as `KeyMap` does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from torchformers.errors import CheckpointError

__all__ = ["Fused", "FusedWeights"]


@dataclass(frozen=True)
class Fused:
    """One fused parameter: its name pattern, the names of its parts, and the row layout both ways.

    `split(tensor, config) -> parts` and `fuse(parts, config) -> tensor`; `config` is the model's config
    (head counts and sizes).
    """

    name: str
    parts: tuple[str, ...]
    split: Callable[[torch.Tensor, Any], Sequence[torch.Tensor]]
    fuse: Callable[[Sequence[torch.Tensor], Any], torch.Tensor]


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\{\}", r"(\d+)") + "$")


class _SplitState(Mapping):
    """`state` with each fused tensor replaced by its parts, split when a part is first looked up."""

    def __init__(self, state: Mapping[str, torch.Tensor], where: dict[str, tuple[str, int, Fused]], config) -> None:
        self._state, self._where, self._config = state, where, config
        fused_names = {source for source, _, _ in where.values()}
        self._names = []
        for name in state:
            if name in fused_names:
                self._names.extend(part for part, (source, _, _) in where.items() if source == name)
            else:
                self._names.append(name)
        self._cache: tuple[str, Sequence[torch.Tensor]] | None = None

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._where:
            return self._state[name]
        source, index, entry = self._where[name]
        if self._cache is None or self._cache[0] != source:  # one fused tensor split at a time
            parts = entry.split(self._state[source], self._config)
            if len(parts) != len(entry.parts):
                raise CheckpointError(f"tensor {source!r}: split into {len(parts)} parts, expected {len(entry.parts)}")
            self._cache = (source, parts)
        return self._cache[1][index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class FusedWeights:
    """The fused parameters of a model family."""

    def __init__(self, entries: Sequence[Fused]) -> None:
        self.entries = list(entries)
        self._rules = [(_compile(e.name), e) for e in self.entries]

    def _match(self, name: str) -> tuple[Fused, tuple[str, ...]] | None:
        for regex, entry in self._rules:
            match = regex.match(name)
            if match:
                return entry, match.groups()
        return None

    def has_fused(self, names) -> bool:
        return any(self._match(n) is not None for n in names)

    def split_state(self, state: Mapping[str, torch.Tensor], config) -> Mapping[str, torch.Tensor]:
        """`state` with every fused tensor replaced by its parts (lazily); `state` itself when it has none."""
        where: dict[str, tuple[str, int, Fused]] = {}
        for name in state:
            found = self._match(name)
            if found is None:
                continue
            entry, groups = found
            for index, part in enumerate(entry.parts):
                part_name = part.format(*groups)
                if part_name in state:
                    raise CheckpointError(f"tensor {part_name!r}: the checkpoint holds it both alone and in {name!r}")
                where[part_name] = (name, index, entry)
        return _SplitState(state, where, config) if where else state

    def fuse_state(self, state: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
        """`state` with the parts of each fused parameter replaced by the fused tensor (where its first part was)."""
        group_of: dict[str, tuple[str, list[str], Fused]] = {}  # part name -> (fused name, part names, entry)
        for entry in self.entries:
            regex = _compile(entry.parts[0])
            for name in state:
                match = regex.match(name)
                if not match:
                    continue
                parts = [p.format(*match.groups()) for p in entry.parts]
                fused_name = entry.name.format(*match.groups())
                missing = [p for p in parts if p not in state]
                if missing:
                    message = f"cannot fuse into {fused_name!r}, missing {', '.join(missing)}"
                    raise CheckpointError(f"tensor {name!r}: {message}")
                for part in parts:
                    group_of[part] = (fused_name, parts, entry)
        out: dict[str, torch.Tensor] = {}
        for name in state:
            if name not in group_of:
                out[name] = state[name]
                continue
            fused_name, parts, entry = group_of[name]
            if fused_name not in out:
                out[fused_name] = entry.fuse([state[p] for p in parts], config)
        return out
