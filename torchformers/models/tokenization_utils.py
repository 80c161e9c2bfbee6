"""Pure Python tokenizers: `PretrainedTokenizer` (alias `PreTrainedTokenizer`).

Follows MindFormers' `mindformers/models/tokenization_utils.py`: a subclass implements
`_tokenize`, `_convert_token_to_id`, `_convert_id_to_token`, `convert_tokens_to_string` and
`get_vocab`; this class adds added/special token handling (texts are split on them first, so
"<s>" in a text is the token, not three characters), truncation, padding and special tokens.

A subclass with a fast library underneath (sentencepiece, tiktoken) overrides `_encode_ids` (or
`_batch_encode_ids`) and `_decode` so the hot path is one library call, not per-token Python.
Offsets mapping is not available here (the fast class has it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from tokenizers import (
    AddedToken,  # MindFormers exports AddedToken from this module (`mindformers.models.tokenization_utils`)
)

from torchformers.models.tokenization_utils_base import (
    PaddingStrategy,
    PreTrainedTokenizerBase,
    TokenizerError,
    TruncationStrategy,
)

__all__ = ["AddedToken", "PreTrainedTokenizer", "PretrainedTokenizer"]


class PretrainedTokenizer(PreTrainedTokenizerBase):
    """Base class of the pure Python tokenizers."""

    def __init__(self, **kwargs):
        added = kwargs.pop("added_tokens_encoder", None) or {}
        super().__init__(**kwargs)
        self._added_tokens_encoder: dict[str, int] = dict(added)
        self._added_tokens_decoder: dict[int, str] = {v: k for k, v in self._added_tokens_encoder.items()}
        self._split_pattern: re.Pattern | None = None
        self._split_pattern_ready = False

    # ----- to implement in subclasses -----
    def _tokenize(self, text: str, **kwargs) -> list[str]:
        raise NotImplementedError

    def _convert_token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def _convert_id_to_token(self, index: int) -> str:
        raise NotImplementedError

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return " ".join(tokens)

    # ----- added tokens -----
    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        return dict(self._added_tokens_encoder)

    @property
    def added_tokens_decoder(self) -> dict[int, str]:
        return dict(self._added_tokens_decoder)

    def get_added_vocab(self) -> dict[str, int]:
        return dict(self._added_tokens_encoder)

    def __len__(self) -> int:
        return self.vocab_size + len([i for i in self._added_tokens_decoder if i >= self.vocab_size])

    def add_tokens(self, new_tokens: str | Sequence[str], special_tokens: bool = False) -> int:
        """Add tokens to the vocabulary (ids after the base vocabulary); returns how many were new."""
        if isinstance(new_tokens, str):
            new_tokens = [new_tokens]
        added = 0
        for token in new_tokens:
            if not isinstance(token, str) or not token:
                raise TokenizerError(f"added tokens must be non-empty strings, got {token!r}")
            if token in self._added_tokens_encoder:
                continue
            index = self._convert_token_to_id(token)
            if index is None or (index == self.unk_token_id and token != self.unk_token):
                index = len(self)
                added += 1
            self._added_tokens_encoder[token] = index
            self._added_tokens_decoder[index] = token
            if special_tokens and token not in self.all_special_tokens:
                self._special_tokens_map["additional_special_tokens"].append(token)
        self._split_pattern_ready = False
        return added

    def add_special_tokens(self, special_tokens_dict: dict) -> int:
        added = 0
        for name, value in special_tokens_dict.items():
            if name not in self.SPECIAL_TOKENS_ATTRIBUTES:
                raise TokenizerError(
                    f"add_special_tokens: unknown key {name!r}; expected one of {self.SPECIAL_TOKENS_ATTRIBUTES}"
                )
            values = value if name == "additional_special_tokens" else [value]
            added += self.add_tokens(list(values), special_tokens=True)
            if name != "additional_special_tokens":
                setattr(self, name, value)
        return added

    def _on_special_tokens_changed(self) -> None:
        self._split_pattern_ready = False

    def _split_on_added_tokens(self, text: str) -> list[tuple[str, int | None]]:
        """Cut `text` at added and special tokens: [(piece, None) | (token, id), ...]."""
        if not self._split_pattern_ready:
            tokens = set(self._added_tokens_encoder) | {t for t in self.all_special_tokens}
            tokens = sorted((t for t in tokens if t), key=len, reverse=True)
            self._split_pattern = re.compile("|".join(map(re.escape, tokens))) if tokens else None
            self._split_pattern_ready = True
        if self._split_pattern is None:
            return [(text, None)]
        pieces: list[tuple[str, int | None]] = []
        start = 0
        for match in self._split_pattern.finditer(text):
            if match.start() > start:
                pieces.append((text[start : match.start()], None))
            token = match.group()
            pieces.append((token, self._token_to_id_with_added(token)))
            start = match.end()
        if start < len(text) or not pieces:
            pieces.append((text[start:], None))
        return pieces

    def _token_to_id_with_added(self, token: str) -> int | None:
        if token in self._added_tokens_encoder:
            return self._added_tokens_encoder[token]
        return self._convert_token_to_id(token)

    # ----- tokens and ids -----
    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs) -> list[str]:
        tokens: list[str] = []
        for piece, special_id in self._split_on_added_tokens(text):
            tokens.extend([piece] if special_id is not None else (self._tokenize(piece, **kwargs) if piece else []))
        if add_special_tokens:
            ids = self.build_inputs_with_special_tokens(self.convert_tokens_to_ids(tokens))
            return self.convert_ids_to_tokens(ids)
        return tokens

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]):
        if isinstance(tokens, str):
            return self._token_to_id_with_added(tokens)
        return [self._token_to_id_with_added(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._added_tokens_decoder.get(ids) or self._convert_id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return [
            self._added_tokens_decoder.get(i) or self._convert_id_to_token(i) for i in map(int, ids) if i not in special
        ]

    def _encode_ids(self, text: str) -> list[int]:
        """Ids of a text without added or special tokens in it (override with a direct library call)."""
        return self.convert_tokens_to_ids(self._tokenize(text))

    def _text_to_ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece, special_id in self._split_on_added_tokens(text):
            if special_id is not None:
                ids.append(special_id)
            elif piece:
                ids.extend(self._encode_ids(piece))
        return ids

    def _batch_encode_ids(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, no special tokens added; texts without added tokens go to one batch call."""
        self._split_on_added_tokens("")  # make sure the split pattern is current
        pattern = self._split_pattern
        # One regex scan over all texts (added tokens never hold "\x00", so no match spans two texts).
        if pattern is None or not pattern.search("\x00".join(texts)):
            return self._encode_ids_batch(texts)
        return [self._text_to_ids(t) for t in texts]

    def _encode_ids_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of texts free of added tokens; override with a library's batch encoder."""
        return [self._encode_ids(t) for t in texts]

    def _encode_fast_path(self, text: str, add_special_tokens: bool) -> list[int]:
        ids = self._batch_encode_ids([text])[0]
        return self.build_inputs_with_special_tokens(ids) if add_special_tokens else ids

    # ----- truncation -----
    def truncate_sequences(
        self,
        ids: list[int],
        pair_ids: list[int] | None = None,
        num_tokens_to_remove: int = 0,
        truncation_strategy: str | TruncationStrategy = "longest_first",
        stride: int = 0,
    ) -> tuple[list[int], list[int] | None, list[int]]:
        """Remove `num_tokens_to_remove` tokens; returns (ids, pair_ids, overflowing tokens)."""
        strategy = TruncationStrategy.parse(truncation_strategy, "truncation")
        if num_tokens_to_remove <= 0 or strategy == TruncationStrategy.DO_NOT_TRUNCATE:
            return ids, pair_ids, []
        left = self.truncation_side == "left"

        def cut(seq: list[int], n: int) -> tuple[list[int], list[int]]:
            if n > len(seq):
                raise TokenizerError(
                    f"cannot truncate {n} tokens from a sequence of {len(seq)} with truncation={strategy.value!r}; "
                    "use a larger max_length or truncation='longest_first'"
                )
            window = min(len(seq), n + stride)
            return (seq[n:], seq[:window]) if left else (seq[: len(seq) - n], seq[len(seq) - window :])

        if strategy == TruncationStrategy.LONGEST_FIRST and pair_ids is not None:
            ids, pair_ids = list(ids), list(pair_ids)
            for _ in range(num_tokens_to_remove):
                if len(ids) >= len(pair_ids):
                    ids = ids[1:] if left else ids[:-1]
                else:
                    pair_ids = pair_ids[1:] if left else pair_ids[:-1]
            return ids, pair_ids, []
        if strategy in (TruncationStrategy.LONGEST_FIRST, TruncationStrategy.ONLY_FIRST):
            ids, overflow = cut(ids, num_tokens_to_remove)
            return ids, pair_ids, overflow
        if pair_ids is None:
            raise TokenizerError("truncation='only_second' needs text_pair")
        pair_ids, overflow = cut(pair_ids, num_tokens_to_remove)
        return ids, pair_ids, overflow

    def _batch_encode(
        self,
        texts: list[str],
        pairs: list[str] | None,
        *,
        add_special_tokens: bool,
        padding_strategy: PaddingStrategy,
        truncation_strategy: TruncationStrategy,
        max_length: int | None,
        stride: int,
        pad_to_multiple_of: int | None,
        padding_side: str,
        return_token_type_ids: bool,
        return_attention_mask: bool,
        return_special_tokens_mask: bool,
        return_offsets_mapping: bool,
    ) -> tuple[dict, None]:
        if return_offsets_mapping:
            raise NotImplementedError(
                f"return_offsets_mapping is not available when using Python based tokenizers such as "
                f"{type(self).__name__}; use a fast tokenizer (PretrainedTokenizerFast, LlamaTokenizerFast)"
            )
        first = self._batch_encode_ids(texts)
        second = self._batch_encode_ids(pairs) if pairs is not None else [None] * len(first)
        truncate = truncation_strategy != TruncationStrategy.DO_NOT_TRUNCATE and max_length is not None
        data: dict[str, list] = {"input_ids": []}
        affixes = self._special_affixes() if add_special_tokens else ([], [])
        if pairs is None and not truncate and not return_token_type_ids and not return_special_tokens_mask and affixes:
            # Common case (single texts, no truncation): no per-sequence method calls.
            prefix, suffix = affixes
            data["input_ids"] = [prefix + ids + suffix for ids in first] if prefix or suffix else first
            data = self._pad_batch(
                data, padding_strategy, max_length, pad_to_multiple_of, padding_side, return_attention_mask
            )
            return data, None
        if return_token_type_ids:
            data["token_type_ids"] = []
        if return_special_tokens_mask:
            data["special_tokens_mask"] = []
        for ids, pair_ids in zip(first, second):
            if truncate:
                extra = self.num_special_tokens_to_add(pair_ids is not None) if add_special_tokens else 0
                total = len(ids) + (len(pair_ids) if pair_ids is not None else 0) + extra
                ids, pair_ids, _ = self.truncate_sequences(
                    ids, pair_ids, total - max_length, truncation_strategy, stride
                )
            if add_special_tokens:
                sequence = self.build_inputs_with_special_tokens(ids, pair_ids)
            else:
                sequence = ids + pair_ids if pair_ids is not None else ids
            data["input_ids"].append(sequence)
            if return_token_type_ids:
                data["token_type_ids"].append(
                    self.create_token_type_ids_from_sequences(ids, pair_ids)
                    if add_special_tokens
                    else [0] * len(ids) + [1] * len(pair_ids or [])
                )
            if return_special_tokens_mask:
                data["special_tokens_mask"].append(
                    self.get_special_tokens_mask(ids, pair_ids) if add_special_tokens else [0] * len(sequence)
                )
        data = self._pad_batch(
            data, padding_strategy, max_length, pad_to_multiple_of, padding_side, return_attention_mask
        )
        return data, None

    def _special_affixes(self) -> tuple[list[int], list[int]] | None:
        """(ids before, ids after) that `build_inputs_with_special_tokens` puts around one sequence,
        or None when it does something else than wrapping."""
        marker = -7
        built = self.build_inputs_with_special_tokens([marker])
        if built.count(marker) != 1:
            return None
        at = built.index(marker)
        return list(built[:at]), list(built[at + 1 :])

    # ----- decoding -----
    def _decode(self, token_ids: list[int], skip_special_tokens: bool = False, **kwargs) -> str:
        """Decode runs of ordinary ids with `convert_tokens_to_string`; special/added tokens as written."""
        special = set(self.all_special_ids)
        parts: list[str] = []
        run: list[str] = []
        for index in token_ids:
            if index in special or index in self._added_tokens_decoder:
                if skip_special_tokens and index in special:
                    continue
                if run:
                    parts.append(self.convert_tokens_to_string(run))
                    run = []
                parts.append(self.convert_ids_to_tokens(index))
            else:
                run.append(self._convert_id_to_token(index))
        if run:
            parts.append(self.convert_tokens_to_string(run))
        return "".join(parts)


PreTrainedTokenizer = PretrainedTokenizer
