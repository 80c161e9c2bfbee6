"""Tokenizer base classes shared by the slow (pure Python) and fast (`tokenizers`) tokenizers.

Follows MindFormers' `mindformers/models/tokenization_utils_base.py` (itself a port of Hugging Face
transformers 4.3x): `BatchEncoding`, `TensorType`, `PaddingStrategy`, `TruncationStrategy`,
`SpecialTokensMixin` and `PreTrainedTokenizerBase` with `__call__`, `encode`, `decode`, `pad`,
`apply_chat_template` (jinja2) and `save_pretrained` / `from_pretrained` in both forms:

- Hugging Face form: `tokenizer_config.json`, `special_tokens_map.json` and the vocabulary files;
- MindFormers form: `<save_name>.yaml` holding `processor: {type: ..., tokenizer: {type: ..., ...}}`
  next to the vocabulary files.

Subclasses supply the encoding itself: `_batch_encode` (ids with special tokens, truncation and
padding for a batch) and `_decode`. Tensor types are "pt" (torch), "np" and "ms" (MindFormers YAML
spelling; numpy arrays here, as there is no MindSpore).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections import UserDict
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml
from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from torchformers.errors import TokenizerError

__all__ = [
    "BatchEncoding",
    "CharSpan",
    "PaddingStrategy",
    "PreTrainedTokenizerBase",
    "SpecialTokensMixin",
    "TensorType",
    "TokenizerError",
    "TruncationStrategy",
]

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
VERY_LARGE_INTEGER = int(1e30)


class _StrEnum(str, Enum):
    @classmethod
    def parse(cls, value, argument: str):
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in cls)
            raise TokenizerError(f"{argument}={value!r} is not valid; expected one of {allowed}") from None


class TensorType(_StrEnum):
    PYTORCH = "pt"
    NUMPY = "np"
    MINDSPORE = "ms"  # MindFormers YAML writes `return_tensors: ms`; numpy arrays here


class PaddingStrategy(_StrEnum):
    LONGEST = "longest"
    MAX_LENGTH = "max_length"
    DO_NOT_PAD = "do_not_pad"


class TruncationStrategy(_StrEnum):
    ONLY_FIRST = "only_first"
    ONLY_SECOND = "only_second"
    LONGEST_FIRST = "longest_first"
    DO_NOT_TRUNCATE = "do_not_truncate"


class CharSpan(NamedTuple):
    start: int
    end: int


class TokenSpan(NamedTuple):
    start: int
    end: int


def _to_tensor(key: str, value, tensor_type: TensorType):
    try:
        array = np.asarray(value)
    except ValueError:
        array = None
    if array is None or array.dtype == object:
        raise TokenizerError(
            f"cannot make a tensor of {key!r}: the sequences have different lengths; "
            "pass padding=True (or padding='max_length') together with return_tensors"
        )
    if array.dtype.kind in "iub":
        array = array.astype(np.int64)
    if tensor_type == TensorType.PYTORCH:
        return torch.from_numpy(array)
    return array


class BatchEncoding(UserDict):
    """The output of a tokenizer call: a dict of `input_ids`, `attention_mask`, ...

    With a fast tokenizer it also keeps the `tokenizers.Encoding` of each sequence, which gives the
    alignment between characters and tokens (`char_to_token`, `token_to_chars`, `word_ids`).
    """

    def __init__(
        self,
        data: Mapping | None = None,
        encoding=None,
        tensor_type: str | TensorType | None = None,
        prepend_batch_axis: bool = False,
    ):
        super().__init__(data or {})
        self._encodings = encoding
        self.convert_to_tensors(tensor_type, prepend_batch_axis)

    def __getattr__(self, item: str):
        if item.startswith("__") or item in ("data", "_encodings"):
            raise AttributeError(item)
        try:
            return self.data[item]
        except KeyError:
            raise AttributeError(item) from None

    def __getitem__(self, item):
        if isinstance(item, str):
            return self.data[item]
        if isinstance(item, int) and self._encodings is not None:
            return self._encodings[item]
        raise KeyError(f"BatchEncoding is indexed by a key name such as 'input_ids', got {item!r}")

    def __getstate__(self):
        return {"data": self.data, "encodings": self._encodings}

    def __setstate__(self, state):
        self.data = state["data"]
        self._encodings = state["encodings"]

    @property
    def is_fast(self) -> bool:
        return self._encodings is not None

    @property
    def encodings(self):
        return self._encodings

    def convert_to_tensors(self, tensor_type: str | TensorType | None = None, prepend_batch_axis: bool = False):
        if tensor_type is None:
            return self
        tensor_type = TensorType.parse(tensor_type, "return_tensors")
        for key, value in self.data.items():
            if prepend_batch_axis:
                value = [value]
            self.data[key] = _to_tensor(key, value, tensor_type)
        return self

    def to(self, device) -> BatchEncoding:
        self.data = {k: v.to(device) if hasattr(v, "to") else v for k, v in self.data.items()}
        return self

    # Alignment helpers: only the `tokenizers` backend knows where each token came from.
    def _encoding(self, batch_index: int):
        if self._encodings is None:
            raise TokenizerError(
                "character/token alignment (char_to_token, token_to_chars, word_ids, tokens) is not "
                "available when using Python based tokenizers; use a fast tokenizer "
                "(PretrainedTokenizerFast, LlamaTokenizerFast)"
            )
        if not 0 <= batch_index < len(self._encodings):
            raise TokenizerError(f"batch_index={batch_index} is out of range for a batch of {len(self._encodings)}")
        return self._encodings[batch_index]

    def _split_index(self, batch_or_index: int, index: int | None) -> tuple[int, int]:
        return (0, batch_or_index) if index is None else (batch_or_index, index)

    def tokens(self, batch_index: int = 0) -> list[str]:
        return self._encoding(batch_index).tokens

    def word_ids(self, batch_index: int = 0) -> list[int | None]:
        return self._encoding(batch_index).word_ids

    def sequence_ids(self, batch_index: int = 0) -> list[int | None]:
        return self._encoding(batch_index).sequence_ids

    def char_to_token(
        self, batch_or_char_index: int, char_index: int | None = None, sequence_index: int = 0
    ) -> int | None:
        """Index of the token holding character `char_index` of the input (None for whitespace)."""
        batch_index, char_index = self._split_index(batch_or_char_index, char_index)
        return self._encoding(batch_index).char_to_token(char_index, sequence_index)

    def token_to_chars(self, batch_or_token_index: int, token_index: int | None = None) -> CharSpan | None:
        """Character span `[start, end)` of token `token_index` in its input text (None for added specials)."""
        batch_index, token_index = self._split_index(batch_or_token_index, token_index)
        encoding = self._encoding(batch_index)
        if encoding.special_tokens_mask[token_index]:
            return None
        span = encoding.token_to_chars(token_index)
        return CharSpan(*span[-2:]) if span is not None else None

    def word_to_tokens(self, batch_or_word_index: int, word_index: int | None = None, sequence_index: int = 0):
        batch_index, word_index = self._split_index(batch_or_word_index, word_index)
        span = self._encoding(batch_index).word_to_tokens(word_index, sequence_index)
        return TokenSpan(*span) if span is not None else None


class SpecialTokensMixin:
    """Named special tokens (`bos_token`, `eos_token`, ...) and their ids."""

    SPECIAL_TOKENS_ATTRIBUTES = [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
        "additional_special_tokens",
    ]

    def _init_special_tokens(self, kwargs: dict) -> None:
        self._special_tokens_map: dict[str, Any] = {name: None for name in self.SPECIAL_TOKENS_ATTRIBUTES}
        self._special_tokens_map["additional_special_tokens"] = []
        for name in self.SPECIAL_TOKENS_ATTRIBUTES:
            if name in kwargs:
                value = kwargs.pop(name)
                if name == "additional_special_tokens":
                    value = [_token_content(t, name) for t in (value or [])]
                else:
                    value = _token_content(value, name)
                self._special_tokens_map[name] = value

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        return {k: copy.copy(v) for k, v in self._special_tokens_map.items() if v}

    @property
    def all_special_tokens(self) -> list[str]:
        tokens: list[str] = []
        for name, value in self._special_tokens_map.items():
            for token in value if name == "additional_special_tokens" else [value]:
                if token and token not in tokens:
                    tokens.append(token)
        return tokens

    @property
    def all_special_ids(self) -> list[int]:
        return [i for i in self.convert_tokens_to_ids(self.all_special_tokens) if i is not None]


def _special_token_property(name: str):
    def getter(self):
        return self._special_tokens_map.get(name)

    def setter(self, value):
        self._special_tokens_map[name] = _token_content(value, name)
        self._on_special_tokens_changed()

    def id_getter(self):
        token = self._special_tokens_map.get(name)
        return None if token is None else self.convert_tokens_to_ids(token)

    def id_setter(self, value):
        self._special_tokens_map[name] = None if value is None else self.convert_ids_to_tokens(value)
        self._on_special_tokens_changed()

    return property(getter, setter), property(id_getter, id_setter)


for _name in SpecialTokensMixin.SPECIAL_TOKENS_ATTRIBUTES[:-1]:
    _tok, _tok_id = _special_token_property(_name)
    setattr(SpecialTokensMixin, _name, _tok)
    setattr(SpecialTokensMixin, f"{_name}_id", _tok_id)


def _additional_get(self):
    return list(self._special_tokens_map["additional_special_tokens"])


def _additional_set(self, value):
    self._special_tokens_map["additional_special_tokens"] = [
        _token_content(t, "additional_special_tokens") for t in value or []
    ]
    self._on_special_tokens_changed()


SpecialTokensMixin.additional_special_tokens = property(_additional_get, _additional_set)
SpecialTokensMixin.additional_special_tokens_ids = property(
    lambda self: self.convert_tokens_to_ids(self.additional_special_tokens)
)


def _token_content(value, name: str) -> str | None:
    """A special token given as a string, or as Hugging Face's AddedToken dict / object."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and "content" in value:
        return value["content"]
    if hasattr(value, "content"):
        return value.content
    raise TokenizerError(f"{name} must be a string (or an AddedToken), got {value!r}")


class PreTrainedTokenizerBase(SpecialTokensMixin):
    """Common API of all tokenizers. Subclasses implement `_batch_encode`, `_decode` and the vocabulary."""

    vocab_files_names: dict[str, str] = {}
    model_input_names: list[str] = ["input_ids", "token_type_ids", "attention_mask"]
    padding_side: str = "right"
    truncation_side: str = "right"
    default_chat_template: str | None = None
    # Keys of __init__ that name files: never written into tokenizer_config.json / YAML.
    _file_kwargs = ("vocab_file", "tokenizer_file", "tokenizer_object", "name_or_path")

    def __init__(self, **kwargs):
        self.init_kwargs = {k: v for k, v in kwargs.items() if k not in self._file_kwargs}
        self.name_or_path = str(kwargs.pop("name_or_path", ""))
        self._init_special_tokens(kwargs)
        self.model_max_length = int(kwargs.pop("model_max_length", VERY_LARGE_INTEGER) or VERY_LARGE_INTEGER)
        self.padding_side = self._side(kwargs.pop("padding_side", self.padding_side), "padding_side")
        self.truncation_side = self._side(kwargs.pop("truncation_side", self.truncation_side), "truncation_side")
        if "model_input_names" in kwargs:
            self.model_input_names = list(kwargs.pop("model_input_names"))
        self.clean_up_tokenization_spaces = bool(kwargs.pop("clean_up_tokenization_spaces", False))
        self.chat_template = kwargs.pop("chat_template", None)
        for key in ("tokenizer_class", "auto_map", "added_tokens_decoder", "processor_class"):
            kwargs.pop(key, None)
        self._extra_kwargs = kwargs

    @staticmethod
    def _side(value: str, argument: str) -> str:
        if value not in ("left", "right"):
            raise TokenizerError(f"{argument}={value!r} is not valid; expected 'left' or 'right'")
        return value

    def _on_special_tokens_changed(self) -> None:
        """Hook: subclasses refresh what depends on special tokens (split patterns, post-processors)."""

    # ----- vocabulary interface (subclasses) -----
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def get_vocab(self) -> dict[str, int]:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.get_vocab())

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]):
        raise NotImplementedError

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False):
        raise NotImplementedError

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs) -> list[str]:
        raise NotImplementedError

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return len(self.build_inputs_with_special_tokens([], [] if pair else None))

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        return token_ids_0 if token_ids_1 is None else token_ids_0 + token_ids_1

    def create_token_type_ids_from_sequences(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        with_specials = self.build_inputs_with_special_tokens(token_ids_0)
        if token_ids_1 is None:
            return [0] * len(with_specials)
        return [0] * len(with_specials) + [1] * (
            len(self.build_inputs_with_special_tokens(token_ids_0, token_ids_1)) - len(with_specials)
        )

    def get_special_tokens_mask(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        special = set(self.all_special_ids)
        if already_has_special_tokens:
            return [1 if t in special else 0 for t in token_ids_0]
        marked = self.build_inputs_with_special_tokens(
            [-1] * len(token_ids_0), None if token_ids_1 is None else [-1] * len(token_ids_1)
        )
        return [0 if t == -1 else 1 for t in marked]

    # ----- argument handling -----
    def _strategies(self, padding, truncation, max_length, pad_to_multiple_of):
        if padding is True:
            padding_strategy = PaddingStrategy.LONGEST
        elif padding is False or padding is None:
            padding_strategy = PaddingStrategy.DO_NOT_PAD
        else:
            padding_strategy = PaddingStrategy.parse(padding, "padding")
        if truncation is True:
            truncation_strategy = TruncationStrategy.LONGEST_FIRST
        elif truncation is False:
            truncation_strategy = TruncationStrategy.DO_NOT_TRUNCATE
        elif truncation is None:
            # As Hugging Face: max_length alone (no padding) means truncate to it.
            both_unset = max_length is not None and padding_strategy == PaddingStrategy.DO_NOT_PAD
            truncation_strategy = TruncationStrategy.LONGEST_FIRST if both_unset else TruncationStrategy.DO_NOT_TRUNCATE
        else:
            truncation_strategy = TruncationStrategy.parse(truncation, "truncation")
        if max_length is None and (
            padding_strategy == PaddingStrategy.MAX_LENGTH or truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE
        ):
            if self.model_max_length >= VERY_LARGE_INTEGER:
                if padding_strategy == PaddingStrategy.MAX_LENGTH:
                    raise TokenizerError(
                        "padding='max_length' needs max_length= (the tokenizer has no model_max_length set)"
                    )
                truncation_strategy = TruncationStrategy.DO_NOT_TRUNCATE
            else:
                max_length = self.model_max_length
        if max_length is not None and (not isinstance(max_length, int) or max_length <= 0):
            raise TokenizerError(f"max_length must be a positive integer, got {max_length!r}")
        if pad_to_multiple_of is not None and (not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0):
            raise TokenizerError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of!r}")
        if padding_strategy != PaddingStrategy.DO_NOT_PAD and self.pad_token_id is None:
            raise TokenizerError(
                f"padding={padding!r} needs a padding token, and {type(self).__name__} has none; "
                "set pad_token (e.g. tokenizer.pad_token = tokenizer.eos_token)"
            )
        return padding_strategy, truncation_strategy, max_length

    @staticmethod
    def _check_texts(text, argument: str) -> tuple[list[str], bool]:
        if isinstance(text, str):
            return [text], False
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            return list(text), True
        raise TokenizerError(f"{argument} must be a string or a list of strings, got {type(text).__name__}")

    def __call__(
        self,
        text: str | Sequence[str],
        text_pair: str | Sequence[str] | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        **kwargs,
    ) -> BatchEncoding:
        """Tokenize one text or a batch; pad, truncate and return lists or tensors.

        Args:
            text: a string or a list of strings.
            text_pair: the second sequence(s) of pairs, or None.
            padding: True / "longest", "max_length" or False.
            truncation: True / "longest_first", "only_first", "only_second" or False; None truncates
                only when `max_length` is given without padding.
            max_length: length to pad or truncate to (defaults to `model_max_length`).
            pad_to_multiple_of: round padded lengths up to a multiple of this.
            padding_side: "left" or "right" (defaults to the tokenizer's `padding_side`).
            return_tensors: None (lists), "pt", "np" or "ms" (numpy).
        """
        if kwargs:
            raise TokenizerError(
                f"{type(self).__name__}.__call__ got unexpected arguments: {', '.join(sorted(kwargs))}"
            )
        texts, is_batch = self._check_texts(text, "text")
        pairs = None
        if text_pair is not None:
            pairs, pair_batch = self._check_texts(text_pair, "text_pair")
            if pair_batch != is_batch or len(pairs) != len(texts):
                raise TokenizerError(
                    f"text and text_pair must both be strings or lists of the same length "
                    f"(got {len(texts)} texts and {len(pairs)} pairs)"
                )
        padding_strategy, truncation_strategy, max_length = self._strategies(
            padding, truncation, max_length, pad_to_multiple_of
        )
        padding_side = self._side(padding_side or self.padding_side, "padding_side")
        data, encodings = self._batch_encode(
            texts,
            pairs,
            add_special_tokens=add_special_tokens,
            padding_strategy=padding_strategy,
            truncation_strategy=truncation_strategy,
            max_length=max_length,
            stride=stride,
            pad_to_multiple_of=pad_to_multiple_of,
            padding_side=padding_side,
            return_token_type_ids=(
                "token_type_ids" in self.model_input_names if return_token_type_ids is None else return_token_type_ids
            ),
            return_attention_mask=(
                "attention_mask" in self.model_input_names if return_attention_mask is None else return_attention_mask
            ),
            return_special_tokens_mask=return_special_tokens_mask,
            return_offsets_mapping=return_offsets_mapping,
        )
        if return_length:
            data["length"] = [len(ids) for ids in data["input_ids"]]
        if not is_batch:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, encodings, tensor_type=return_tensors, prepend_batch_axis=not is_batch)

    def _batch_encode(self, texts: list[str], pairs: list[str] | None, **options) -> tuple[dict, list | None]:
        raise NotImplementedError

    def encode_plus(self, text: str, text_pair: str | None = None, **kwargs) -> BatchEncoding:
        return self(text, text_pair, **kwargs)

    def batch_encode_plus(self, batch_text_or_text_pairs: Sequence, **kwargs) -> BatchEncoding:
        items = list(batch_text_or_text_pairs)
        if items and isinstance(items[0], (list, tuple)):
            return self([a for a, _ in items], [b for _, b in items], **kwargs)
        return self(items, **kwargs)

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        **kwargs,
    ) -> list[int]:
        """Token ids of one text (with special tokens unless `add_special_tokens=False`)."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes one string, got {type(text).__name__}; use __call__ for batches")
        if text_pair is None and not padding and truncation is None and max_length is None and not kwargs:
            return self._encode_fast_path(text, add_special_tokens)
        out = self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            **kwargs,
        )
        return out["input_ids"]

    def _encode_fast_path(self, text: str, add_special_tokens: bool) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    # ----- padding (also used on already tokenized data) -----
    def _pad_batch(
        self,
        data: dict[str, list[list[int]]],
        padding_strategy: PaddingStrategy,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        padding_side: str,
        return_attention_mask: bool,
    ) -> dict[str, list[list[int]]]:
        """Pad every list in `data` (input_ids with pad id, masks with 0/1) and add attention_mask."""
        ids_batch = data["input_ids"]
        if return_attention_mask and "attention_mask" not in data:
            data["attention_mask"] = [[1] * len(ids) for ids in ids_batch]
        if padding_strategy == PaddingStrategy.DO_NOT_PAD or not ids_batch:
            return data
        target = max(len(ids) for ids in ids_batch) if padding_strategy == PaddingStrategy.LONGEST else max_length
        if pad_to_multiple_of:
            target = -(-target // pad_to_multiple_of) * pad_to_multiple_of
        pad_values = {
            "input_ids": self.pad_token_id,
            "attention_mask": 0,
            "token_type_ids": 0,
            "special_tokens_mask": 1,
            "offset_mapping": (0, 0),
        }
        for key, batch in data.items():
            if key not in pad_values:
                continue
            value = pad_values[key]
            padded = []
            for seq in batch:
                missing = target - len(seq)
                if missing <= 0:
                    padded.append(seq)
                elif padding_side == "right":
                    padded.append(list(seq) + [value] * missing)
                else:
                    padded.append([value] * missing + list(seq))
            data[key] = padded
        return data

    def pad(
        self,
        encoded_inputs: Mapping | Sequence[Mapping],
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
    ) -> BatchEncoding:
        """Pad already tokenized inputs (a dict of lists, or a list of dicts) to one length."""
        if isinstance(encoded_inputs, Sequence) and not isinstance(encoded_inputs, Mapping):
            if not encoded_inputs or not isinstance(encoded_inputs[0], Mapping):
                raise TokenizerError("pad() takes a dict of lists or a non-empty list of dicts with 'input_ids'")
            encoded_inputs = {k: [e[k] for e in encoded_inputs] for k in encoded_inputs[0]}
        if "input_ids" not in encoded_inputs:
            raise TokenizerError(f"pad() needs 'input_ids' in its input, got keys {sorted(encoded_inputs)}")
        ids = encoded_inputs["input_ids"]
        single = bool(ids) and isinstance(ids[0], int) if not hasattr(ids, "ndim") else ids.ndim == 1
        data = {k: [list(map(int, v))] if single else [list(map(int, s)) for s in v] for k, v in encoded_inputs.items()}
        strategy, _, max_length = self._strategies(padding, False, max_length, pad_to_multiple_of)
        data = self._pad_batch(
            data,
            strategy,
            max_length,
            pad_to_multiple_of,
            self._side(padding_side or self.padding_side, "padding_side"),
            "attention_mask" in self.model_input_names if return_attention_mask is None else return_attention_mask,
        )
        if single:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data, tensor_type=return_tensors, prepend_batch_axis=single)

    # ----- decoding -----
    def decode(
        self,
        token_ids,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
        **kwargs,
    ) -> str:
        """Text of `token_ids` (a list, numpy array or tensor of ints)."""
        token_ids = _as_int_list(token_ids)
        text = self._decode(token_ids, skip_special_tokens=skip_special_tokens, **kwargs)
        clean = (
            self.clean_up_tokenization_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        )
        return self.clean_up_tokenization(text) if clean else text

    def batch_decode(self, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs):
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces, **kwargs) for s in sequences]

    def _decode(self, token_ids: list[int], skip_special_tokens: bool = False, **kwargs) -> str:
        raise NotImplementedError

    @staticmethod
    def clean_up_tokenization(out_string: str) -> str:
        for before, after in (
            (" .", "."),
            (" ?", "?"),
            (" !", "!"),
            (" ,", ","),
            (" ' ", "'"),
            (" n't", "n't"),
            (" 'm", "'m"),
            (" 's", "'s"),
            (" 've", "'ve"),
            (" 're", "'re"),
        ):
            out_string = out_string.replace(before, after)
        return out_string

    # ----- chat templates -----
    def apply_chat_template(
        self,
        conversation: Sequence[Mapping[str, str]],
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        return_dict: bool = False,
        **template_kwargs,
    ):
        """Render a conversation (`[{"role": ..., "content": ...}, ...]`) with the jinja2 chat template.

        Returns the text (`tokenize=False`), its token ids (special tokens come from the template, none
        are added), or a BatchEncoding with `return_dict=True`.
        """
        template = chat_template or self.chat_template or self.default_chat_template
        if template is None:
            raise TokenizerError(
                f"{type(self).__name__} has no chat template: pass chat_template= or set tokenizer.chat_template"
            )
        if not isinstance(conversation, Sequence) or not all(
            isinstance(m, Mapping) and "role" in m for m in conversation
        ):
            raise TokenizerError("conversation must be a list of {'role': ..., 'content': ...} dicts")
        compiled = _compile_chat_template(template)
        rendered = compiled.render(
            messages=list(conversation),
            add_generation_prompt=add_generation_prompt,
            **{k: v for k, v in self.special_tokens_map.items()},
            **template_kwargs,
        )
        if not tokenize:
            return rendered
        out = self(
            rendered,
            add_special_tokens=False,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            return_tensors=return_tensors,
        )
        return out if return_dict else out["input_ids"]

    # ----- saving and loading -----
    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Copy the vocabulary files into `save_directory`; returns the written paths."""
        written = []
        for attr, filename in self.vocab_files_names.items():
            source = getattr(self, attr, None)
            if not source or not os.path.isfile(source):
                continue
            target = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + filename)
            if os.path.abspath(source) != os.path.abspath(target):
                shutil.copyfile(source, target)
            written.append(target)
        return tuple(written)

    def _config_for_saving(self) -> dict:
        config = {k: v for k, v in self.init_kwargs.items() if k not in self.SPECIAL_TOKENS_ATTRIBUTES}
        config.update(self.special_tokens_map)
        config["model_max_length"] = self.model_max_length
        config["padding_side"] = self.padding_side
        config["clean_up_tokenization_spaces"] = self.clean_up_tokenization_spaces
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        return config

    def save_pretrained(
        self, save_directory: str | os.PathLike, save_name: str = "mindspore_model", file_format: str = "json"
    ) -> tuple[str, ...]:
        """Write the tokenizer to `save_directory`.

        `file_format="json"` (Hugging Face form): tokenizer_config.json, special_tokens_map.json and the
        vocabulary files. `file_format="yaml"` (MindFormers form): `<save_name>.yaml` with a
        `processor.tokenizer` block, and the vocabulary files.
        """
        if file_format not in ("json", "yaml"):
            raise TokenizerError(f"file_format={file_format!r} is not valid; expected 'json' or 'yaml'")
        os.makedirs(save_directory, exist_ok=True)
        vocab_paths = self.save_vocabulary(str(save_directory))
        config = self._config_for_saving()
        if file_format == "yaml":
            block = {"type": type(self).__name__, **config}
            for path in vocab_paths:  # the YAML names its files relative to itself, resolved on load
                attr = next((a for a, f in self.vocab_files_names.items() if path.endswith(f)), None)
                if attr:
                    block[attr] = os.path.basename(path)
            processor = {"type": getattr(self, "processor_class", None) or "LlamaProcessor", "tokenizer": block}
            path = os.path.join(save_directory, f"{save_name}.yaml")
            with open(path, "w", encoding="utf-8") as f:
                yaml.safe_dump({"processor": processor}, f, sort_keys=False, allow_unicode=True)
            return (*vocab_paths, path)
        config["tokenizer_class"] = type(self).__name__
        config_path = os.path.join(save_directory, TOKENIZER_CONFIG_FILE)
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False, sort_keys=True)
        map_path = os.path.join(save_directory, SPECIAL_TOKENS_MAP_FILE)
        with open(map_path, "w", encoding="utf-8") as f:
            json.dump(self.special_tokens_map, f, indent=2, ensure_ascii=False)
        return (*vocab_paths, config_path, map_path)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load from a folder written by `save_pretrained` (either form) or a Hugging Face tokenizer folder.

        Keyword arguments override what the folder's configuration says.
        """
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():
            raise TokenizerError(
                f"{cls.__name__}.from_pretrained: {str(folder)!r} is not a folder (model hubs are not used; "
                "pass a local folder with tokenizer_config.json or a MindFormers YAML and the vocabulary files)"
            )
        config: dict[str, Any] = {}
        if (folder / TOKENIZER_CONFIG_FILE).is_file():
            config = _read_json(folder / TOKENIZER_CONFIG_FILE)
            if (folder / SPECIAL_TOKENS_MAP_FILE).is_file():
                for key, value in _read_json(folder / SPECIAL_TOKENS_MAP_FILE).items():
                    config.setdefault(key, value)
            if (folder / CHAT_TEMPLATE_FILE).is_file() and "chat_template" not in config:
                config["chat_template"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        else:
            yamls = sorted(folder.glob("*.yaml"))
            if yamls:
                config = _tokenizer_block_from_yaml(yamls[0])
        for attr, filename in cls.vocab_files_names.items():
            given = config.get(attr)
            if given and not os.path.isabs(given):
                given = str(folder / given)
            if not given or not os.path.isfile(given):
                given = str(folder / filename) if (folder / filename).is_file() else None
            config[attr] = given
        config.pop("type", None)
        config.update(kwargs)
        config["name_or_path"] = str(folder)
        return cls(**config)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"padding_side={self.padding_side!r}, special_tokens={self.special_tokens_map})"
        )


def _as_int_list(token_ids) -> list[int]:
    if hasattr(token_ids, "tolist"):
        token_ids = token_ids.tolist()
    if isinstance(token_ids, int):
        return [token_ids]
    if not isinstance(token_ids, list):
        token_ids = list(token_ids)
    return token_ids


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise TokenizerError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _tokenizer_block_from_yaml(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    block = data.get("processor", {}).get("tokenizer") if isinstance(data.get("processor"), dict) else None
    if not isinstance(block, dict):
        raise TokenizerError(f"{path}: expected a 'processor.tokenizer' block (MindFormers YAML form)")
    block = dict(block)
    block.pop("auto_register", None)
    return block


_TEMPLATE_CACHE: dict[str, Any] = {}


def _compile_chat_template(template: str):
    compiled = _TEMPLATE_CACHE.get(template)
    if compiled is None:
        def raise_exception(message):
            raise TokenizerError(f"chat template: {message}")

        # Same environment options as Hugging Face, so published templates render identically.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        try:
            compiled = env.from_string(template)
        except TemplateError as err:
            raise TokenizerError(f"the chat template is not valid jinja2: {err}") from None
        _TEMPLATE_CACHE[template] = compiled
    return compiled
