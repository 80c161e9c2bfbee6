"""`LlamaTokenizer`: the Llama 2 sentencepiece tokenizer, pure Python around `sentencepiece`.

Follows MindFormers' `mindformers/models/llama/llama_tokenizer.py` (Hugging Face's `LlamaTokenizer`):
`add_bos_token=True`, `add_eos_token=False`, and `pad_token="<unk>"` (id 0) by default, as MindFormers'
data preprocessing pads with id 0. Texts are split at special/added tokens first ("<s>" in a text is
the BOS token); each remaining piece is encoded by sentencepiece with its dummy prefix ("legacy"
behaviour, the default). Encoding and decoding are single sentencepiece calls (batched for batches).

The default chat template is the published Llama 2 chat format (Meta's `llama/generation.py`):
`<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{user} [/INST] {assistant} </s><s>[INST] ...`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sentencepiece as spm

from torchformers.assets import fetch
from torchformers.models.gguf_tokenizer import gguf_to_sentencepiece, read_gguf_tokenizer
from torchformers.models.tokenization_utils import PretrainedTokenizer
from torchformers.models.tokenization_utils_base import TokenizerError
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["LLAMA2_CHAT_TEMPLATE", "LlamaTokenizer", "build_llama2_tokenizer_model"]

SPIECE_UNDERLINE = "▁"

# Meta's Llama 2 chat format, as a jinja2 template (the form Hugging Face ships for Llama-2-chat).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)


class BosEosMixin:
    """BOS/EOS placement of the Llama tokenizers, controlled by `add_bos_token` / `add_eos_token`."""

    add_bos_token: bool
    add_eos_token: bool

    def _bos_eos(self) -> tuple[list[int], list[int]]:
        bos = [self.bos_token_id] if self.add_bos_token and self.bos_token_id is not None else []
        eos = [self.eos_token_id] if self.add_eos_token and self.eos_token_id is not None else []
        return bos, eos

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        bos, eos = self._bos_eos()
        output = bos + list(token_ids_0) + eos
        if token_ids_1 is not None:
            output = output + bos + list(token_ids_1) + eos
        return output

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens: bool = False):
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [1 if t in special else 0 for t in token_ids_0]
        bos, eos = self._bos_eos()
        mask = [1] * len(bos) + [0] * len(token_ids_0) + [1] * len(eos)
        if token_ids_1 is not None:
            mask += [1] * len(bos) + [0] * len(token_ids_1) + [1] * len(eos)
        return mask

    def create_token_type_ids_from_sequences(self, token_ids_0, token_ids_1=None):
        bos, eos = self._bos_eos()
        output = [0] * (len(bos) + len(token_ids_0) + len(eos))
        if token_ids_1 is not None:
            output += [1] * (len(bos) + len(token_ids_1) + len(eos))
        return output


@MindFormerRegister.register(MindFormerModuleType.TOKENIZER)
class LlamaTokenizer(BosEosMixin, PretrainedTokenizer):
    """Llama 2 tokenizer on a sentencepiece `tokenizer.model`.

    Args:
        vocab_file: path of the sentencepiece model (`tokenizer.model`).
        unk_token, bos_token, eos_token, pad_token: special tokens (pad defaults to "<unk>", id 0).
        sp_model_kwargs: extra arguments of `sentencepiece.SentencePieceProcessor` (e.g. sampling).
        add_bos_token: put BOS in front of every sequence (default True).
        add_eos_token: put EOS after every sequence (default False).
        legacy: True (default) encodes each piece between special tokens with a dummy-prefix space;
            False adds that space only at the start of the text.
    """

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]
    FILE_LIST = ["tokenizer_config.json"]
    default_chat_template = LLAMA2_CHAT_TEMPLATE

    def __init__(
        self,
        vocab_file: str,
        unk_token: str = "<unk>",
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        pad_token: str | None = "<unk>",
        sp_model_kwargs: dict[str, Any] | None = None,
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        clean_up_tokenization_spaces: bool = False,
        legacy: bool = True,
        **kwargs,
    ):
        if not vocab_file or not os.path.isfile(vocab_file):
            raise TokenizerError(
                f"{type(self).__name__}: vocab_file {vocab_file!r} is not a file (a sentencepiece tokenizer.model)"
            )
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        try:
            self.sp_model = spm.SentencePieceProcessor(model_file=str(vocab_file), **self.sp_model_kwargs)
        except (RuntimeError, OSError) as err:
            raise TokenizerError(f"{vocab_file} is not a sentencepiece model: {err}") from None
        self.vocab_file = str(vocab_file)
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.legacy = legacy
        super().__init__(
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            sp_model_kwargs=self.sp_model_kwargs,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            legacy=legacy,
            vocab_file=vocab_file,
            **kwargs,
        )

    def __getstate__(self):
        state = self.__dict__.copy()
        state["sp_model"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.sp_model = spm.SentencePieceProcessor(model_file=self.vocab_file, **self.sp_model_kwargs)

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return self.sp_model.encode(text, out_type=str)

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        if not 0 <= index < self.vocab_size:
            raise TokenizerError(f"token id {index} is out of range for a vocabulary of {self.vocab_size}")
        return self.sp_model.id_to_piece(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.sp_model.decode(tokens)

    # One sentencepiece call per text, or per batch.
    def _encode_ids(self, text: str) -> list[int]:
        return self.sp_model.encode(text)

    def _encode_ids_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp_model.encode(texts)

    def _text_to_ids(self, text: str) -> list[int]:
        if self.legacy:
            return super()._text_to_ids(text)
        ids: list[int] = []
        for i, (piece, special_id) in enumerate(self._split_on_added_tokens(text)):
            if special_id is not None:
                ids.append(special_id)
            elif piece and i == 0:
                ids.extend(self.sp_model.encode(piece))
            elif piece:
                # No dummy prefix after a special token: encode behind a marker and drop its pieces.
                marker = self.sp_model.encode(self.unk_token)
                ids.extend(self.sp_model.encode(self.unk_token + piece)[len(marker) :])
        return ids

    def _decode(self, token_ids: list[int], skip_special_tokens: bool = False, **kwargs) -> str:
        special = set(self.all_special_ids) | set(self._added_tokens_decoder)
        if not special.intersection(token_ids):
            return self.sp_model.decode(token_ids)
        if skip_special_tokens and not self._added_tokens_decoder:
            return self.sp_model.decode([i for i in token_ids if i not in special])
        return super()._decode(token_ids, skip_special_tokens=skip_special_tokens)


def build_llama2_tokenizer_model(target: Path) -> Path:
    """Asset builder of `llama2/tokenizer.model`: Llama 2's sentencepiece model rebuilt from llama.cpp's
    `ggml-vocab-llama-spm.gguf` (byte-identical to Meta's layout; the asset's sha256 checks it)."""
    info = read_gguf_tokenizer(fetch("vocab/ggml-vocab-llama-spm.gguf"))
    target = Path(target)
    tmp = target.with_name(target.name + ".part")
    tmp.write_bytes(gguf_to_sentencepiece(info))
    os.replace(tmp, target)
    return target
