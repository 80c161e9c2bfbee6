"""Fast tokenizers on the Rust `tokenizers` library: `PretrainedTokenizerFast` (alias `PreTrainedTokenizerFast`).

Follows MindFormers' `mindformers/models/tokenization_utils_fast.py` (Hugging Face transformers'
`PreTrainedTokenizerFast`): any `tokenizer.json` loads (byte-level BPE such as GPT-2 / SmolLM2 /
Llama 3, or sentencepiece-style BPE with byte fallback such as Llama 2); batches are encoded,
truncated and padded inside the library, and the character/token alignment of each sequence is kept
(`return_offsets_mapping`, `BatchEncoding.char_to_token`, `token_to_chars`, `word_ids`).

Registered as TOKENIZER under both spellings, so YAML can say
`tokenizer: {type: PretrainedTokenizerFast, tokenizer_file: /path/tokenizer.json}`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

from tokenizers import AddedToken, Tokenizer, trainers

from torchformers.models.tokenization_utils_base import (
    PaddingStrategy,
    PreTrainedTokenizerBase,
    TokenizerError,
    TruncationStrategy,
)
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["PreTrainedTokenizerFast", "PretrainedTokenizerFast"]

TOKENIZER_FILE = "tokenizer.json"


class PretrainedTokenizerFast(PreTrainedTokenizerBase):
    """A tokenizer backed by a `tokenizers.Tokenizer`.

    Args:
        tokenizer_file: path of a `tokenizer.json`.
        tokenizer_object: a `tokenizers.Tokenizer` to use instead of a file (copied).
        **kwargs: special tokens (`bos_token`, `eos_token`, `pad_token`, ...), `model_max_length`,
            `padding_side`, `chat_template` and the other options of `PreTrainedTokenizerBase`.
    """

    vocab_files_names = {"tokenizer_file": TOKENIZER_FILE}
    model_input_names = ["input_ids", "attention_mask"]
    slow_tokenizer_class = None

    def __init__(self, tokenizer_file: str | None = None, tokenizer_object: Tokenizer | None = None, **kwargs):
        if tokenizer_object is not None:
            backend = copy.deepcopy(tokenizer_object)
        elif tokenizer_file is not None:
            if not os.path.isfile(tokenizer_file):
                raise TokenizerError(f"tokenizer_file {str(tokenizer_file)!r} does not exist")
            try:
                backend = Tokenizer.from_file(str(tokenizer_file))
            except Exception as err:  # the library raises plain Exception on malformed JSON
                raise TokenizerError(
                    f"tokenizer_file {str(tokenizer_file)!r} is not a valid tokenizer.json: {err}"
                ) from None
        else:
            backend = self._backend_from_other_files(kwargs)
            if backend is None:
                raise TokenizerError(
                    f"{type(self).__name__} needs tokenizer_file= (a tokenizer.json) or tokenizer_object="
                )
        super().__init__(**kwargs)
        self.tokenizer_file = tokenizer_file
        self._tokenizer = backend
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self._backend_options: tuple | None = None
        self._register_special_tokens()

    def _backend_from_other_files(self, kwargs: dict) -> Tokenizer | None:
        """Hook for subclasses that can build the backend from other files (e.g. a sentencepiece model)."""
        return None

    def _register_special_tokens(self) -> None:
        """Special tokens the backend does not know become added special tokens (split out of texts)."""
        missing = [t for t in self.all_special_tokens if self._tokenizer.token_to_id(t) is None]
        if missing:
            self._tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])

    def _on_special_tokens_changed(self) -> None:
        if hasattr(self, "_tokenizer"):
            self._register_special_tokens()

    @property
    def backend_tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def decoder(self):
        return self._tokenizer.decoder

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        return {t.content: i for i, t in self._tokenizer.get_added_tokens_decoder().items()}

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]):
        if isinstance(tokens, str):
            index = self._tokenizer.token_to_id(tokens)
            if index is None and self.unk_token is not None and tokens != self.unk_token:
                return self._tokenizer.token_to_id(self.unk_token)
            return index
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int], skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._tokenizer.id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else ()
        return [self._tokenizer.id_to_token(i) for i in map(int, ids) if i not in special]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self._tokenizer.decoder.decode(tokens) if self._tokenizer.decoder else " ".join(tokens)

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False, **kwargs) -> list[str]:
        self._set_backend_options(None)
        return self._tokenizer.encode(text, pair, add_special_tokens=add_special_tokens).tokens

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._tokenizer.num_special_tokens_to_add(pair)

    def add_tokens(self, new_tokens: str | Sequence[str], special_tokens: bool = False) -> int:
        if isinstance(new_tokens, str):
            new_tokens = [new_tokens]
        tokens = [AddedToken(t, special=special_tokens, normalized=not special_tokens) for t in new_tokens]
        if special_tokens:
            return self._tokenizer.add_special_tokens(tokens)
        return self._tokenizer.add_tokens(tokens)

    def add_special_tokens(self, special_tokens_dict: dict) -> int:
        added = 0
        for name, value in special_tokens_dict.items():
            if name not in self.SPECIAL_TOKENS_ATTRIBUTES:
                raise TokenizerError(
                    f"add_special_tokens: unknown key {name!r}; expected one of {self.SPECIAL_TOKENS_ATTRIBUTES}"
                )
            values = value if name == "additional_special_tokens" else [value]
            added += self.add_tokens(list(values), special_tokens=True)
            setattr(self, name, value)
        return added

    # ----- encoding -----
    def _set_backend_options(self, options: tuple | None) -> None:
        """Configure the backend's truncation and padding (only when they change)."""
        if options == self._backend_options:
            return
        if options is None:
            self._tokenizer.no_truncation()
            self._tokenizer.no_padding()
        else:
            truncation, max_length, stride, padding, pad_to_multiple_of, padding_side = options
            if truncation != TruncationStrategy.DO_NOT_TRUNCATE and max_length is not None:
                self._tokenizer.enable_truncation(
                    max_length, stride=stride, strategy=truncation.value, direction=self.truncation_side
                )
            else:
                self._tokenizer.no_truncation()
            if padding != PaddingStrategy.DO_NOT_PAD:
                self._tokenizer.enable_padding(
                    direction=padding_side,
                    pad_id=self.pad_token_id,
                    pad_type_id=0,
                    pad_token=self.pad_token,
                    length=max_length if padding == PaddingStrategy.MAX_LENGTH else None,
                    pad_to_multiple_of=pad_to_multiple_of,
                )
            else:
                self._tokenizer.no_padding()
        self._backend_options = options

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
    ) -> tuple[dict, list]:
        plain = padding_strategy == PaddingStrategy.DO_NOT_PAD and (
            truncation_strategy == TruncationStrategy.DO_NOT_TRUNCATE or max_length is None
        )
        self._set_backend_options(
            None
            if plain
            else (truncation_strategy, max_length, stride, padding_strategy, pad_to_multiple_of, padding_side)
        )
        inputs = texts if pairs is None else list(zip(texts, pairs))
        encodings = self._tokenizer.encode_batch(inputs, add_special_tokens=add_special_tokens)
        data = {"input_ids": [e.ids for e in encodings]}
        if return_token_type_ids:
            data["token_type_ids"] = [e.type_ids for e in encodings]
        if return_attention_mask:
            data["attention_mask"] = (
                [[1] * len(ids) for ids in data["input_ids"]] if plain else [e.attention_mask for e in encodings]
            )
        if return_special_tokens_mask:
            data["special_tokens_mask"] = [e.special_tokens_mask for e in encodings]
        if return_offsets_mapping:
            data["offset_mapping"] = [e.offsets for e in encodings]
        return data, encodings

    def _encode_fast_path(self, text: str, add_special_tokens: bool) -> list[int]:
        self._set_backend_options(None)
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def _decode(self, token_ids: list[int], skip_special_tokens: bool = False, **kwargs) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs):
        if clean_up_tokenization_spaces or (clean_up_tokenization_spaces is None and self.clean_up_tokenization_spaces):
            return super().batch_decode(sequences, skip_special_tokens, clean_up_tokenization_spaces, **kwargs)
        sequences = (
            sequences.tolist()
            if hasattr(sequences, "tolist")
            else [s.tolist() if hasattr(s, "tolist") else list(s) for s in sequences]
        )
        return self._tokenizer.decode_batch(sequences, skip_special_tokens=skip_special_tokens)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        written = list(super().save_vocabulary(save_directory, filename_prefix))
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + TOKENIZER_FILE)
        self._set_backend_options(None)
        self._tokenizer.save(path)
        return tuple(p for p in written if not p.endswith(TOKENIZER_FILE)) + (path,)

    def train_new_from_iterator(self, text_iterator, vocab_size: int, **trainer_kwargs) -> PretrainedTokenizerFast:
        """A new tokenizer of the same kind (same pipeline), trained on `text_iterator` (BPE models)."""
        backend = copy.deepcopy(self._tokenizer)
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=self.all_special_tokens, **trainer_kwargs)
        backend.train_from_iterator(text_iterator, trainer=trainer)
        kwargs = {k: v for k, v in self.init_kwargs.items()}
        kwargs.update(self.special_tokens_map)
        return type(self)(tokenizer_object=backend, **kwargs)


PreTrainedTokenizerFast = PretrainedTokenizerFast
MindFormerRegister.register_cls(PretrainedTokenizerFast, MindFormerModuleType.TOKENIZER)
MindFormerRegister.register_cls(
    PretrainedTokenizerFast, MindFormerModuleType.TOKENIZER, alias="PreTrainedTokenizerFast"
)
