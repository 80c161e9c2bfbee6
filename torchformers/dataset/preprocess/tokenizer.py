"""The tokenizer access the preprocessing needs, as MindFormers' `llama_preprocess.py` builds its tokenizer.

The preprocessing needs only: `encode(text, add_special_tokens=False)` (or `__call__(text)["input_ids"]`),
`bos_token_id`, `eos_token_id`, `pad_token_id` and, for the `template` chat format,
`apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`. `load_tokenizer` builds
a registered TOKENIZER class (or an external one from `--register_path`), or a plain SentencePiece
adapter when `LlamaTokenizer` is not registered.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import sentencepiece

import torchformers.models  # noqa: F401  (the built-in tokenizers register themselves on import)
from torchformers.dataset.preprocess.errors import PreprocessError
from torchformers.errors import ConfigError, RegistryError
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister
from torchformers.tools.register.paths import use_register_path
from torchformers.tools.register.register import import_module_from_folder

__all__ = ["SentencePieceTokenizer", "encode_text", "load_tokenizer", "special_id", "tokenizer_name"]

# special tokens and the chat template saved beside the vocabulary (Hugging Face layout)
_SAVED_TOKENIZER_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "add_bos_token", "add_eos_token",
                         "chat_template")  # fmt: skip


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without BOS/EOS, from any tokenizer with the interface above."""
    if hasattr(tokenizer, "encode"):
        try:
            ids = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:  # encode(text) without the keyword: assumed to add nothing
            ids = tokenizer.encode(text)
    else:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids)


def special_id(tokenizer: Any, token: str) -> int:
    """The id of a special token such as "<|eot_id|>" (HF-style or tiktoken-style tokenizers)."""
    specials = getattr(tokenizer, "special_tokens", None)
    if isinstance(specials, dict) and token in specials:
        return int(specials[token])
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if convert is not None:
        found = convert(token)
        if isinstance(found, int) and found != getattr(tokenizer, "unk_token_id", None):
            return found
    raise PreprocessError(f"the tokenizer {type(tokenizer).__name__} has no special token {token!r}")


class SentencePieceTokenizer:
    """A SentencePiece model with the small interface above (used when `LlamaTokenizer` is not registered)."""

    def __init__(self, vocab_file: str | os.PathLike):
        self.vocab_file = str(vocab_file)
        self.sp = sentencepiece.SentencePieceProcessor(model_file=self.vocab_file)
        self.bos_token_id = self.sp.bos_id()
        self.eos_token_id = self.sp.eos_id()
        pad = self.sp.pad_id()
        self.pad_token_id = pad if pad >= 0 else self.sp.unk_id()  # Llama 2: pad = <unk> = 0, as MindFormers

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self.sp.encode(text)
        return [self.bos_token_id, *ids, self.eos_token_id] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if not self.sp.is_control(i)]
        return self.sp.decode(ids)


def load_tokenizer(
    model_file: str | None = None,
    tokenizer_type: str | None = None,
    tokenizer_file: str | None = None,
    register_path: str | None = None,
) -> Any:
    """Build the tokenizer the command line names.

    `tokenizer_type` is a registered TOKENIZER name (`LlamaTokenizer`, or an external class such as
    `Llama3Tokenizer` found in `register_path`), or `module_file.ClassName` as in YAML `auto_register`.
    Without it, `model_file` is a SentencePiece model read by `LlamaTokenizer` (as MindFormers), or by a
    plain SentencePiece adapter when that class is not available.
    """
    kind = MindFormerModuleType.TOKENIZER
    if tokenizer_type is None:
        if model_file is None:
            raise PreprocessError("give a tokenizer: --model_file (SentencePiece model) or --tokenizer_type NAME")
        if not Path(model_file).is_file():
            raise PreprocessError(f"--model_file {model_file} is not a file")
        if MindFormerRegister.is_exist(kind, "LlamaTokenizer"):
            cls = MindFormerRegister.get_cls(kind, "LlamaTokenizer")
            return cls(vocab_file=model_file, add_bos_token=False, add_eos_token=False)
        return SentencePieceTokenizer(model_file)
    try:
        cls = _resolve_tokenizer_class(tokenizer_type, register_path)
    except RegistryError as err:
        raise PreprocessError(f"--tokenizer_type {tokenizer_type}: {err}") from None
    kwargs = {}
    for key, value in (("vocab_file", model_file), ("tokenizer_file", tokenizer_file)):
        if value is not None:
            if not Path(value).is_file():
                raise PreprocessError(f"--{'model_file' if key == 'vocab_file' else key} {value} is not a file")
            kwargs[key] = value
            saved = Path(value).parent / "tokenizer_config.json"
            if saved.is_file():
                settings = json.loads(saved.read_text(encoding="utf-8"))
                kwargs.update({k: v for k, v in settings.items() if k in _SAVED_TOKENIZER_KEYS and k not in kwargs})
    return cls(**kwargs)


def _resolve_tokenizer_class(tokenizer_type: str, register_path: str | None) -> type:
    kind = MindFormerModuleType.TOKENIZER
    if register_path:
        # as run_mindformer.py: the current directory first, then the repository root
        try:
            folder = use_register_path(register_path)
        except ConfigError as err:
            raise PreprocessError(str(err)) from None
        if "." in tokenizer_type:  # module_file.ClassName, as YAML auto_register
            return MindFormerRegister.auto_register(tokenizer_type, kind)
        if not MindFormerRegister.is_exist(kind, tokenizer_type):
            # import the folder's tokenizer modules; their classes register themselves or are picked up here
            for path in sorted(folder.glob("*tokeniz*.py")):
                module = import_module_from_folder(folder, path.stem)
                found = getattr(module, tokenizer_type, None)
                if isinstance(found, type) and not MindFormerRegister.is_exist(kind, tokenizer_type):
                    MindFormerRegister.register_cls(found, kind)
    return MindFormerRegister.get_cls(kind, tokenizer_type)


def tokenizer_name(tokenizer: Any) -> str:
    """`ClassName(vocabulary file name)`, as recorded in the output's metadata."""
    path = getattr(tokenizer, "vocab_file", None) or getattr(tokenizer, "name_or_path", None)
    return f"{type(tokenizer).__name__}({Path(path).name})" if path else type(tokenizer).__name__
