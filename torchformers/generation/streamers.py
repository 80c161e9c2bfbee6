"""Streamers: print or hand out text while `generate` runs (MindFormers `generation/streamers.py`).

`generate` calls `put(ids)` with the prompt first and then each new token, and `end()` at the finish.
Text is released up to the last complete word (or at once for CJK characters), as in MindFormers and
Hugging Face. Note MindFormers' default `skip_special_tokens=True` (Hugging Face's is False).
"""

from __future__ import annotations

from queue import Queue
from typing import Any

__all__ = ["BaseStreamer", "TextIteratorStreamer", "TextStreamer"]


class BaseStreamer:
    def put(self, value: Any) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


def _ids(value: Any) -> list[int]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, int):
        return [value]
    if value and isinstance(value[0], (list, tuple)):
        if len(value) > 1:
            raise ValueError(f"TextStreamer only supports a batch of one sequence, got {len(value)}")
        value = value[0]
    return [int(v) for v in value]


def _is_cjk(text: str) -> bool:
    if not text:
        return False
    cp = ord(text[-1])
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class TextStreamer(BaseStreamer):
    """Print decoded text to stdout as it is generated."""

    def __init__(
        self, tokenizer: Any = None, skip_prompt: bool = False, skip_special_tokens: bool = True, **decode_kwargs
    ):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = {"skip_special_tokens": skip_special_tokens, **decode_kwargs}
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value: Any) -> None:
        ids = _ids(value)
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.next_tokens_are_prompt = False
        self.token_cache.extend(ids)
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\n"):
            printable = text[self.print_len :]
            self.token_cache, self.print_len = [], 0
        elif _is_cjk(text):
            printable = text[self.print_len :]
            self.print_len += len(printable)
        else:
            # hold back the last (possibly incomplete) word; U+FFFD marks an incomplete byte sequence
            end = text.rfind(" ") + 1
            printable = "" if text.endswith("\ufffd") else text[self.print_len : end]
            self.print_len += len(printable)
        self.on_finalized_text(printable)

    def end(self) -> None:
        if self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            printable = text[self.print_len :]
        else:
            printable = ""
        self.token_cache, self.print_len = [], 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, flush=True, end="" if not stream_end else None)


class TextIteratorStreamer(TextStreamer):
    """Queue text chunks for another thread: `for text in streamer: ...` while `generate` runs in a thread.

    `timeout` (seconds) bounds each wait for the next chunk (raises `queue.Empty`).
    """

    def __init__(
        self,
        tokenizer: Any = None,
        skip_prompt: bool = False,
        timeout: float | None = None,
        skip_special_tokens: bool = True,
        **decode_kwargs,
    ):
        super().__init__(tokenizer, skip_prompt, skip_special_tokens, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration()
        return value
