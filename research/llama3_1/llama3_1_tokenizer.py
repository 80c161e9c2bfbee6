"""Llama 3 / 3.1 tokenizer (`Llama3Tokenizer`) as external code, loaded through `auto_register`.

Follows MindFormers' `research/llama3_1/llama3_1_tokenizer.py` (the same file as
`research/llama3/llama3_tokenizer.py`) and Meta's `llama3/tokenizer.py`: tiktoken BPE with Meta's
split pattern and 256 special tokens after the 128,000 ranks, named as MindFormers names them
(`<|begin_of_text|>`, `<|end_of_text|>`, `<|reserved_special_token_0..3|>`, `<|start_header_id|>`,
`<|end_header_id|>`, `<|reserved_special_token_4|>`, `<|eot_id|>`, `<|reserved_special_token_5..250|>`).

This file is not part of the library; a YAML names it like this, and `--register_path research/llama3_1`
(the environment variable `REGISTER_PATH`) lets the registry import it:

    processor:
      type: LlamaProcessor
      tokenizer:
        type: Llama3Tokenizer
        auto_register: llama3_1_tokenizer.Llama3Tokenizer
        vocab_file: /path/tokenizer.model      # Meta's tiktoken file, or a tokenizer.json
        pad_token: "<|reserved_special_token_0|>"

Differences from MindFormers, each to match Meta's tokenizer exactly: no NFC normalization before
encoding (Meta's tokenizer and tiktoken have none), a `tokenizer.json` vocabulary is read through
the byte-level alphabet (its keys are GPT-2 style unicode strings, not raw bytes), and the default
chat template is the published Llama 3 chat format.
"""

from __future__ import annotations

import base64
import json
import os

import tiktoken

from torchformers.models.llama.llama_tokenizer import BosEosMixin
from torchformers.models.tokenization_utils import PretrainedTokenizer
from torchformers.models.tokenization_utils_base import TokenizerError
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["LLAMA3_CHAT_TEMPLATE", "Llama3Tokenizer", "PAT_STR", "special_token_names"]

PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Meta's Llama 3 instruct chat format as the jinja2 template published with Meta-Llama-3-8B-Instruct.
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def special_token_names(num_reserved_special_tokens: int = 256) -> list[str]:
    """The special tokens in id order (ids follow the base vocabulary)."""
    names = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|reserved_special_token_2|>",
        "<|reserved_special_token_3|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|reserved_special_token_4|>",
        "<|eot_id|>",
    ]
    return names + [f"<|reserved_special_token_{i}|>" for i in range(5, num_reserved_special_tokens - 5)]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (the form tokenizer.json uses)."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


BYTE_ENCODER = _bytes_to_unicode()
BYTE_DECODER = {c: b for b, c in BYTE_ENCODER.items()}


def load_ranks(vocab_file: str) -> dict[bytes, int]:
    """BPE ranks from Meta's `tokenizer.model` (`base64(token) rank` lines) or a `tokenizer.json`."""
    if not vocab_file or not os.path.isfile(vocab_file):
        raise TokenizerError(
            f"Llama3Tokenizer: vocab_file {vocab_file!r} is not a file (tokenizer.model or tokenizer.json)"
        )
    if str(vocab_file).endswith(".json"):
        with open(vocab_file, encoding="utf-8") as f:
            vocab = json.load(f).get("model", {}).get("vocab")
        if not isinstance(vocab, dict):
            raise TokenizerError(f"{vocab_file}: expected a tokenizer.json with a 'model.vocab' mapping")
        try:
            return {bytes(BYTE_DECODER[c] for c in token): rank for token, rank in vocab.items()}
        except KeyError as err:
            raise TokenizerError(
                f"{vocab_file}: vocabulary is not byte-level BPE (character {err} outside its alphabet)"
            ) from None
    ranks: dict[bytes, int] = {}
    with open(vocab_file, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
            except ValueError:
                raise TokenizerError(
                    f"{vocab_file}, line {number}: expected 'base64-token rank' (Meta's tiktoken format)"
                ) from None
    return ranks


@MindFormerRegister.register(MindFormerModuleType.TOKENIZER)
class Llama3Tokenizer(BosEosMixin, PretrainedTokenizer):
    """Llama 3 tokenizer on tiktoken.

    Args:
        vocab_file: Meta's `tokenizer.model` (tiktoken ranks) or a Hugging Face `tokenizer.json`.
        bos_token, eos_token, pad_token: special tokens.
        add_bos_token / add_eos_token: add BOS / EOS to every sequence (both False, as MindFormers).
        errors: how invalid UTF-8 is decoded ("replace").
        num_reserved_special_tokens: number of special tokens after the base vocabulary (256).
    """

    vocab_files_names = {"vocab_file": "tokenizer.model"}
    model_input_names = ["input_ids", "attention_mask"]
    default_chat_template = LLAMA3_CHAT_TEMPLATE

    def __init__(
        self,
        vocab_file: str,
        bos_token: str = "<|begin_of_text|>",
        eos_token: str = "<|end_of_text|>",
        pad_token: str = "<|reserved_special_token_0|>",
        add_bos_token: bool = False,
        add_eos_token: bool = False,
        errors: str = "replace",
        num_reserved_special_tokens: int = 256,
        **kwargs,
    ):
        ranks = load_ranks(vocab_file)
        self.vocab_file = str(vocab_file)
        self.n_base = len(ranks)
        names = special_token_names(num_reserved_special_tokens)
        self.special_tokens = {name: self.n_base + i for i, name in enumerate(names)}
        self.tiktoken = tiktoken.Encoding(
            name=os.path.basename(self.vocab_file),
            pat_str=PAT_STR,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
        )
        self._ranks = ranks
        self._token_to_id: dict[str, int] | None = None  # built on first use (128k entries)
        self.errors = errors
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        super().__init__(
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            errors=errors,
            num_reserved_special_tokens=num_reserved_special_tokens,
            vocab_file=vocab_file,
            **kwargs,
        )

    @property
    def vocab_size(self) -> int:
        return self.tiktoken.n_vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self._vocab())

    def _vocab(self) -> dict[str, int]:
        if self._token_to_id is None:
            vocab = {"".join(BYTE_ENCODER[b] for b in token): rank for token, rank in self._ranks.items()}
            vocab.update(self.special_tokens)
            vocab.update(self._added_tokens_encoder)
            self._token_to_id = vocab
        return self._token_to_id

    # Tokens are shown in the byte-level alphabet ("Ġworld"), the form tokenizer.json uses.
    def _tokenize(self, text: str, **kwargs) -> list[str]:
        return [self._convert_id_to_token(i) for i in self.tiktoken.encode(text, allowed_special="all")]

    def _convert_token_to_id(self, token: str) -> int | None:
        if token in self.special_tokens:
            return self.special_tokens[token]
        return self._vocab().get(token)

    def _convert_id_to_token(self, index: int) -> str:
        if index >= self.n_base:
            if index >= self.tiktoken.n_vocab:
                raise TokenizerError(f"token id {index} is out of range for a vocabulary of {self.tiktoken.n_vocab}")
            return self.tiktoken.decode_single_token_bytes(index).decode("utf-8")
        return "".join(BYTE_ENCODER[b] for b in self.tiktoken.decode_single_token_bytes(index))

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        data = bytearray()
        for token in tokens:
            if token in self.special_tokens:
                data.extend(token.encode("utf-8"))
            else:
                data.extend(BYTE_DECODER[c] for c in token)
        return data.decode("utf-8", errors=self.errors)

    # Hot paths: one tiktoken call (special-token text such as "<|eot_id|>" is encoded as the token).
    def _encode_ids(self, text: str) -> list[int]:
        return self.tiktoken.encode(text, allowed_special="all")

    def _batch_encode_ids(self, texts: list[str]) -> list[list[int]]:
        if self._added_tokens_encoder:
            return super()._batch_encode_ids(texts)
        return self.tiktoken.encode_batch(texts, allowed_special="all")

    def _encode_fast_path(self, text: str, add_special_tokens: bool) -> list[int]:
        if self._added_tokens_encoder:
            return super()._encode_fast_path(text, add_special_tokens)
        ids = self.tiktoken.encode(text, allowed_special="all")
        return self.build_inputs_with_special_tokens(ids) if add_special_tokens else ids

    def _decode(self, token_ids: list[int], skip_special_tokens: bool = False, **kwargs) -> str:
        if self._added_tokens_decoder:
            return super()._decode(token_ids, skip_special_tokens=skip_special_tokens)
        if skip_special_tokens:
            token_ids = [i for i in token_ids if i < self.n_base]
        return self.tiktoken.decode(token_ids, errors=self.errors)

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        """Write the ranks in Meta's format (`tokenizer.model`), whichever file they came from."""
        path = os.path.join(save_directory, (filename_prefix + "-" if filename_prefix else "") + "tokenizer.model")
        lines = [
            f"{base64.b64encode(token).decode('ascii')} {rank}\n"
            for token, rank in sorted(self._ranks.items(), key=lambda kv: kv[1])
        ]
        with open(path, "w", encoding="ascii") as f:
            f.writelines(lines)
        return (path,)
