"""Incremental detokenization with stop strings, for one generated sequence."""

from __future__ import annotations

from typing import Any

__all__ = ["IncrementalText"]


class IncrementalText:
    """Turns tokens, as they come, into text: each new token decodes only with the few before it (so the cost
    per token stays flat), a piece that ends inside a multi-byte character waits for the next token, and the
    text is cut at the first stop string. While a stop string could still be forming at the end, that tail is
    held back from `take()`, so a client never sees part of a stop string."""

    def __init__(self, tokenizer: Any, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False  # a stop string was found (the text is cut before it)
        self.finished = False
        self._prefix = 0  # token offsets of the decoding window
        self._read = 0
        self._sent = 0  # characters handed out by take()
        self._tokens_of_text = 0  # tokens whose text is in self.text (those after a stop string are not)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def add(self, token_ids: list[int], final: bool = False) -> None:
        """Append tokens; `final`: no more will come (the tail is decoded as it is)."""
        for tok in token_ids:
            if self.stopped:
                break
            self.ids.append(int(tok))
            before = self._decode(self.ids[self._prefix : self._read])
            after = self._decode(self.ids[self._prefix :])
            if len(after) > len(before) and not after.endswith("\ufffd"):
                delta = after[len(before) :]
                self._prefix, self._read = self._read, len(self.ids)
                self._append(delta)
            self._tokens_of_text = len(self.ids)
        if final and not self.stopped:
            before = self._decode(self.ids[self._prefix : self._read])
            after = self._decode(self.ids[self._prefix :])
            if len(after) > len(before):
                self._append(after[len(before) :])
                self._prefix = self._read = len(self.ids)
        if final:
            self.finished = True

    def _append(self, delta: str) -> None:
        start = max(0, len(self.text) - self.hold)
        self.text += delta
        if not self.stop:
            return
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text = self.text[: min(hits)]
            self.stopped = True
            self.finished = True

    @property
    def num_tokens(self) -> int:
        """Tokens generated up to (and including) the one that completed a stop string."""
        return self._tokens_of_text

    def take(self) -> str:
        """The text not handed out yet, less a tail that could be the start of a stop string."""
        end = len(self.text) if (self.finished or not self.stop) else max(self._sent, len(self.text) - self.hold)
        piece = self.text[self._sent : end]
        self._sent = end
        return piece
