"""Tokenizer files rebuilt from a GGUF file's tokenizer metadata (read with the `gguf` package).

A GGUF file (llama.cpp's format) carries its tokenizer as metadata: `tokenizer.ggml.model`,
`tokens`, `scores`, `token_type`, `merges`, `pre` (the pre-tokenizer name), the bos/eos/unk/pad ids
and often `tokenizer.chat_template`. This module turns that back into ordinary tokenizer files:

- `tokenizer.ggml.model == "llama"` (sentencepiece): a sentencepiece `tokenizer.model` (BPE, byte
  fallback, identity normalizer, dummy prefix; pieces, scores and types from the GGUF), the layout
  of Meta's Llama 2 model file. From llama.cpp's `ggml-vocab-llama-spm.gguf` the result is
  byte-identical to a Llama 2 `tokenizer.model` rebuilt this way (sha256 b2c82538...).
- `tokenizer.ggml.model == "gpt2"` (byte-level BPE): a `tokenizer.json` with the vocabulary, the
  merges and the pre-tokenizer regex that llama.cpp's `llama-vocab.cpp` uses for the GGUF's `pre`
  value ("llama-bpe" for Llama 3, "smollm", "gpt2", ...). The settings (`PreTokenizer`) come from the
  registered model families: each `ModelSpec.pretokenizers` lists those of the vocabularies it uses.

`convert_gguf_tokenizer(gguf_path, save_directory)` writes those plus `tokenizer_config.json`
(special tokens, `add_bos_token`, chat template), so the folder loads with `from_pretrained`;
`tokenizer_from_gguf(gguf_path)` returns a ready tokenizer, of the class the family reading the file's
`general.architecture` names in its `ModelSpec.gguf_tokenizers`.

This module sits with the file formats: it names no model family and imports none.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from torchformers.models.tokenization_utils_base import TokenizerError
from torchformers.models.tokenization_utils_fast import PretrainedTokenizerFast
from torchformers.tools.register import MindFormerRegister

__all__ = [
    "GGUFTokenizerInfo",
    "PreTokenizer",
    "convert_gguf_tokenizer",
    "find_pretokenizer",
    "gguf_to_sentencepiece",
    "gguf_to_tokenizer",
    "read_gguf_metadata",
    "read_gguf_tokenizer",
    "tokenizer_class_for",
    "tokenizer_from_gguf",
]

# llama.cpp token types == sentencepiece piece types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class PreTokenizer:
    """How a byte-level BPE vocabulary splits text before merging; a `ModelSpec.pretokenizers` value,
    keyed by GGUF `tokenizer.ggml.pre` (llama.cpp's name, as in its `llama-vocab.cpp`).

    Attributes:
        pattern: the split regex (as in the model's `tokenizer.json`), or None for GPT-2's own.
        split_digits: split digits one at a time before the regex.
        nfc: add an NFC normalizer.
        ignore_merges: look whole words up in the vocabulary before merging (Llama 3).
    """

    pattern: str | None = None
    split_digits: bool = False
    nfc: bool = False
    ignore_merges: bool = False


def find_pretokenizer(name: str) -> PreTokenizer:
    """The settings of GGUF pre-tokenizer `name` from the registered model families' `pretokenizers`."""
    known: set[str] = set()
    for spec in MindFormerRegister.model_specs.values():
        if name in spec.pretokenizers:
            return spec.pretokenizers[name]
        known.update(spec.pretokenizers)
    raise TokenizerError(
        f"GGUF tokenizer.ggml.pre {name!r} is not supported; supported: {', '.join(sorted(known)) or 'none'} (a model "
        "family lists the pre-tokenizers of its vocabularies in ModelSpec.pretokenizers and registers with "
        "MindFormerRegister.register_model_spec, e.g. in a file under --register_path DIR)"
    )


def tokenizer_class_for(architecture: str | None, model: str) -> type:
    """The tokenizer class for GGUF files of `general.architecture` `architecture` whose vocabulary is
    `tokenizer.ggml.model` `model`: from the `gguf_tokenizers` of the family reading that architecture,
    else of the first family listing `model`; a byte-level BPE vocabulary falls back to
    `PretrainedTokenizerFast`."""
    specs = list(MindFormerRegister.model_specs.values())
    own = [s for s in specs if s.gguf is not None and getattr(s.gguf, "name", None) == architecture]
    for spec in own + specs:
        if model in spec.gguf_tokenizers:
            return spec.gguf_tokenizers[model]
    if model == "gpt2":
        return PretrainedTokenizerFast
    raise TokenizerError(
        f"no registered model family names a tokenizer class for GGUF tokenizer.ggml.model {model!r} "
        f"(general.architecture {architecture!r}); a family lists it in ModelSpec.gguf_tokenizers"
    )


@dataclass
class GGUFTokenizerInfo:
    """The tokenizer metadata of a GGUF file."""

    model: str
    pre: str
    tokens: list[str]
    token_types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos / eos / unk / pad
    add_bos_token: bool | None = None
    add_eos_token: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | None = None
    architecture: str | None = None  # general.architecture

    def special_token(self, name: str) -> str | None:
        index = self.special_ids.get(name)
        return self.tokens[index] if index is not None and 0 <= index < len(self.tokens) else None


def read_gguf_metadata(path: str | os.PathLike, prefix: str | tuple[str, ...] = "") -> dict[str, Any]:
    """The key/value metadata of a GGUF file (keys starting with `prefix`, or one of them), without its tensors.

    Reads the header directly with `struct`, using the `gguf` package's value types: the package's
    `GGUFReader` builds numpy views for every string of a 150k-token vocabulary and takes 10-20 s on
    a large vocabulary, this takes well under a second.
    """
    import gguf  # start-up time: 0.25 s, paid only by code that reads GGUF files

    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"GGUF file {str(path)!r} does not exist")
    scalar = {
        gguf.GGUFValueType.UINT8: "B",
        gguf.GGUFValueType.INT8: "b",
        gguf.GGUFValueType.UINT16: "H",
        gguf.GGUFValueType.INT16: "h",
        gguf.GGUFValueType.UINT32: "I",
        gguf.GGUFValueType.INT32: "i",
        gguf.GGUFValueType.FLOAT32: "f",
        gguf.GGUFValueType.BOOL: "?",
        gguf.GGUFValueType.UINT64: "Q",
        gguf.GGUFValueType.INT64: "q",
        gguf.GGUFValueType.FLOAT64: "d",
    }
    with open(path, "rb") as f:
        data = f.read(1 << 16)
        if data[:4] != b"GGUF":
            raise TokenizerError(f"{path} is not a GGUF file (magic {data[:4]!r}, expected b'GGUF')")
        version, _, kv_count = struct.unpack_from("<IQQ", data, 4)
        if version < 2:
            raise TokenizerError(f"{path}: GGUF version {version} is not supported (need 2 or later)")
        # Metadata sits at the start of the file; map it rather than read the tensors after it.
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    offset = 24

    def read_str() -> str:
        nonlocal offset
        (length,) = struct.unpack_from("<Q", buffer, offset)
        text = buffer[offset + 8 : offset + 8 + length].decode("utf-8", errors="replace")
        offset += 8 + length
        return text

    def read_value(kind: int):
        nonlocal offset
        if kind == gguf.GGUFValueType.STRING:
            return read_str()
        if kind == gguf.GGUFValueType.ARRAY:
            item_kind, count = struct.unpack_from("<IQ", buffer, offset)
            offset += 12
            if item_kind in scalar:
                fmt = scalar[item_kind]
                values = list(struct.unpack_from(f"<{count}{fmt}", buffer, offset))
                offset += count * struct.calcsize(fmt)
                return values
            return [read_value(item_kind) for _ in range(count)]
        fmt = scalar.get(kind)
        if fmt is None:
            raise TokenizerError(f"{path}: unknown GGUF value type {kind}")
        (value,) = struct.unpack_from(f"<{fmt}", buffer, offset)
        offset += struct.calcsize(fmt)
        return value

    metadata: dict[str, Any] = {}
    try:
        for _ in range(kv_count):
            key = read_str()
            (kind,) = struct.unpack_from("<I", buffer, offset)
            offset += 4
            value = read_value(kind)
            if key.startswith(prefix):
                metadata[key] = value
    except struct.error as err:
        raise TokenizerError(f"{path}: truncated or corrupt GGUF metadata ({err})") from None
    finally:
        buffer.close()
    return metadata


def read_gguf_tokenizer(path: str | os.PathLike) -> GGUFTokenizerInfo:
    """Read the tokenizer metadata of the GGUF file at `path`."""
    fields = read_gguf_metadata(path, prefix=("tokenizer.", "general.architecture"))

    def get(key: str, default: Any = None):
        return fields.get(key, default)

    if "tokenizer.ggml.model" not in fields or "tokenizer.ggml.tokens" not in fields:
        raise TokenizerError(f"{path} has no tokenizer metadata (tokenizer.ggml.model / tokenizer.ggml.tokens)")
    tokens = get("tokenizer.ggml.tokens")
    special_ids = {
        name: int(get(f"tokenizer.ggml.{key}"))
        for name, key in (
            ("bos", "bos_token_id"),
            ("eos", "eos_token_id"),
            ("unk", "unknown_token_id"),
            ("pad", "padding_token_id"),
        )
        if f"tokenizer.ggml.{key}" in fields
    }
    return GGUFTokenizerInfo(
        model=get("tokenizer.ggml.model"),
        pre=get("tokenizer.ggml.pre", "default"),
        tokens=tokens,
        token_types=get("tokenizer.ggml.token_type", [NORMAL] * len(tokens)),
        scores=get("tokenizer.ggml.scores"),
        merges=get("tokenizer.ggml.merges"),
        special_ids=special_ids,
        add_bos_token=get("tokenizer.ggml.add_bos_token"),
        add_eos_token=get("tokenizer.ggml.add_eos_token"),
        add_space_prefix=get("tokenizer.ggml.add_space_prefix"),
        chat_template=get("tokenizer.chat_template"),
        architecture=get("general.architecture"),
    )


def gguf_to_sentencepiece(info: GGUFTokenizerInfo) -> bytes:
    """Serialized sentencepiece `ModelProto` for a `tokenizer.ggml.model == "llama"` vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb  # start-up time: protobuf, 0.3 s

    if info.model != "llama":
        raise TokenizerError(f"a sentencepiece model needs tokenizer.ggml.model 'llama', this GGUF has {info.model!r}")
    if info.scores is None:
        raise TokenizerError("the GGUF has no tokenizer.ggml.scores, which a sentencepiece model needs")
    model = pb.ModelProto()
    for piece, score, kind in zip(info.tokens, info.scores, info.token_types):
        entry = model.pieces.add()
        entry.piece = piece
        entry.score = score
        entry.type = kind
    trainer = model.trainer_spec
    trainer.model_type = pb.TrainerSpec.BPE
    trainer.vocab_size = len(info.tokens)
    # Training options of Meta's Llama tokenizer (not in the GGUF; kept so the file matches its layout).
    trainer.split_digits = True
    trainer.allow_whitespace_only_pieces = True
    trainer.byte_fallback = any(kind == BYTE for kind in info.token_types)
    trainer.unk_id = info.special_ids.get("unk", 0)
    trainer.bos_id = info.special_ids.get("bos", -1)
    trainer.eos_id = info.special_ids.get("eos", -1)
    trainer.pad_id = info.special_ids.get("pad", -1)
    normalizer = model.normalizer_spec
    normalizer.name = "identity"
    normalizer.precompiled_charsmap = b""
    normalizer.add_dummy_prefix = True if info.add_space_prefix is None else bool(info.add_space_prefix)
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    return model.SerializeToString()


def gguf_to_tokenizer(info: GGUFTokenizerInfo):
    """A `tokenizers.Tokenizer` (byte-level BPE) for a `tokenizer.ggml.model == "gpt2"` vocabulary."""
    if info.model != "gpt2":
        raise TokenizerError(
            f"a byte-level BPE tokenizer.json needs tokenizer.ggml.model 'gpt2', this GGUF has {info.model!r}"
        )
    pre = find_pretokenizer(info.pre)
    if not info.merges:
        raise TokenizerError("the GGUF has no tokenizer.ggml.merges, which byte-level BPE needs")
    pattern, split_digits, nfc, ignore_merges = pre.pattern, pre.split_digits, pre.nfc, pre.ignore_merges
    vocab = {token: index for index, token in enumerate(info.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in info.merges]
    tokenizer = Tokenizer(BPE(vocab, merges, ignore_merges=ignore_merges))
    if nfc:
        tokenizer.normalizer = normalizers.NFC()
    steps = []
    if split_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if pattern is not None:
        steps.append(pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=pattern is None))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps) if len(steps) > 1 else steps[0]
    tokenizer.decoder = decoders.ByteLevel()
    special = [
        AddedToken(t, special=True, normalized=False) for t, k in zip(info.tokens, info.token_types) if k == CONTROL
    ]
    user = [
        AddedToken(t, special=False, normalized=False)
        for t, k in zip(info.tokens, info.token_types)
        if k == USER_DEFINED
    ]
    if special:
        tokenizer.add_special_tokens(special)
    if user:
        tokenizer.add_tokens(user)
    bos = info.special_token("bos")
    if info.add_bos_token and bos is not None:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, info.special_ids["bos"])]
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _tokenizer_config(info: GGUFTokenizerInfo, tokenizer_class: str) -> dict:
    config: dict[str, Any] = {"tokenizer_class": tokenizer_class, "model_input_names": ["input_ids", "attention_mask"]}
    for name in ("bos", "eos", "unk", "pad"):
        token = info.special_token(name)
        config[f"{name}_token"] = token
    config["add_bos_token"] = bool(info.add_bos_token) if info.add_bos_token is not None else info.model == "llama"
    config["add_eos_token"] = bool(info.add_eos_token)
    if info.chat_template:
        config["chat_template"] = info.chat_template
    if info.model == "llama" and config["pad_token"] is None:
        config["pad_token"] = config["unk_token"]  # MindFormers' Llama default: pad with <unk> (id 0)
    return config


def convert_gguf_tokenizer(gguf_path: str | os.PathLike, save_directory: str | os.PathLike) -> dict[str, Path]:
    """Write the GGUF's tokenizer as `tokenizer.model` or `tokenizer.json`, plus `tokenizer_config.json`.

    Returns the written files by kind: {"tokenizer.model" | "tokenizer.json": path, "tokenizer_config.json": path}.
    """
    return _write_tokenizer_files(read_gguf_tokenizer(gguf_path), gguf_path, save_directory)


def _write_tokenizer_files(
    info: GGUFTokenizerInfo, gguf_path: str | os.PathLike, save_directory: str | os.PathLike
) -> dict[str, Path]:
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if info.model == "llama":
        path = folder / "tokenizer.model"
        path.write_bytes(gguf_to_sentencepiece(info))
        config = _tokenizer_config(info, "LlamaTokenizer")
    elif info.model == "gpt2":
        path = folder / "tokenizer.json"
        gguf_to_tokenizer(info).save(str(path))
        config = _tokenizer_config(info, "PretrainedTokenizerFast")
    else:
        raise TokenizerError(
            f"{gguf_path}: tokenizer.ggml.model {info.model!r} is not supported (supported: 'llama', 'gpt2')"
        )
    written[path.name] = path
    config_path = folder / "tokenizer_config.json"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    written[config_path.name] = config_path
    return written


def tokenizer_from_gguf(
    gguf_path: str | os.PathLike, save_directory: str | os.PathLike | None = None, fast: bool = True
):
    """A tokenizer for the GGUF's vocabulary, of the class the family reading the file names for its
    `tokenizer.ggml.model` (`ModelSpec.gguf_tokenizers`; Llama: `LlamaTokenizerFast` for sentencepiece
    vocabularies, `PretrainedTokenizerFast` for byte-level BPE). `fast=False` takes the class's
    `slow_tokenizer_class` (Llama: `LlamaTokenizer`) where it has one.

    The files are written to `save_directory` (a temporary folder when None; the tokenizer keeps
    everything it needs in memory).
    """
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(save_directory) if save_directory is not None else Path(tmp)
        info = read_gguf_tokenizer(gguf_path)
        _write_tokenizer_files(info, gguf_path, folder)
        cls = tokenizer_class_for(info.architecture, info.model)
        if not fast and getattr(cls, "slow_tokenizer_class", None) is not None:
            cls = cls.slow_tokenizer_class
            if save_directory is None:
                # sentencepiece reads its model file again when pickled: it must outlive this call
                raise TokenizerError("tokenizer_from_gguf(fast=False) needs save_directory= to keep tokenizer.model")
        tokenizer = cls.from_pretrained(folder)
    return tokenizer
