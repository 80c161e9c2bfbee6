"""`Qwen2Tokenizer`: Qwen2's byte-level BPE tokenizer as external code, on the Rust `tokenizers` library.

Qwen2's tokenizer (Hugging Face `transformers/models/qwen2/tokenization_qwen2.py`) is GPT-2 style
byte-level BPE over a 151,643-token vocabulary plus special tokens (`<|endoftext|>`, `<|im_start|>`,
`<|im_end|>`), with NFC normalization and its own pre-tokenizer regex (digits one at a time, unlike
Llama 3's runs of up to three). `PretrainedTokenizerFast` holds it; this class builds the backend from
any of the files a Qwen2 checkpoint comes with:

* `tokenizer_file`: a Hugging Face `tokenizer.json`;
* `vocab_file` + `merges_file`: Hugging Face's `vocab.json` and `merges.txt` (MindFormers' research
  Qwen2 tokenizer reads these);
* `vocab_file` ending in `.gguf`: the vocabulary and merges stored in a llama.cpp GGUF file (e.g.
  llama.cpp's `ggml-vocab-qwen2.gguf`); special tokens are its control tokens.

Registered only through `auto_register` (`tokenizer: {type: Qwen2Tokenizer, auto_register:
qwen2_tokenizer.Qwen2Tokenizer, vocab_file: ...}`) with `--register_path research/qwen2`.

Importing this module also registers the whole Qwen2 family with the library, in one
`MindFormerRegister.register_model_spec(ModelSpec(...))` call at its end: `Qwen2Config`,
`Qwen2ForCausalLM` and `Qwen2Tokenizer` under their YAML `type:` names; the Hugging Face key map
(`convert_weight.py --model qwen2 --register_path research/qwen2`); the GGUF architecture "qwen2" (Qwen2
GGUF files convert to native checkpoints with a `Qwen2ForCausalLM` config); the "qwen2" pre-tokenizer
(`tokenizer.ggml.pre`), so `torchformers.models.gguf_tokenizer` turns a Qwen2 GGUF vocabulary into a
`tokenizer.json`; and the assets `vocab/ggml-vocab-qwen2.gguf` (+ `.inp` / `.out` reference vectors)
(`python -m torchformers.tools.assets --register_path research/qwen2 vocab/ggml-vocab-qwen2.gguf`).
The registration lives here because every use of the family reads a tokenizer: a YAML's
`auto_register: qwen2_tokenizer.Qwen2Tokenizer` and the tools' `--register_path` both import this file.
"""

from __future__ import annotations

import json
import os

from qwen2_config import Qwen2Config
from qwen2_model import Qwen2ForCausalLM
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE

from torchformers.assets import llama_cpp_vocab
from torchformers.checkpoint.gguf_io import GGUFArch
from torchformers.models.gguf_tokenizer import CONTROL, USER_DEFINED, PreTokenizer, read_gguf_tokenizer
from torchformers.models.llama.convert_weight import LLAMA_GGUF_KEY_MAP, LLAMA_HF_KEY_MAP
from torchformers.models.llama.spec import LLAMA_PARALLEL
from torchformers.models.tokenization_utils_base import TokenizerError
from torchformers.models.tokenization_utils_fast import PretrainedTokenizerFast
from torchformers.tools.register import MindFormerRegister, ModelSpec

__all__ = ["PRETOKENIZE_REGEX", "QWEN2_CHAT_TEMPLATE", "QWEN2_SPEC", "Qwen2Tokenizer", "build_qwen2_backend"]

# transformers' tokenization_qwen2.py PRETOKENIZE_REGEX
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML, the format of the Qwen2 instruct models (their tokenizer_config.json chat_template)
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def build_qwen2_backend(
    vocab: dict[str, int], merges: list[tuple[str, str]], special: list[str], added: list[str] = ()
) -> Tokenizer:
    """The `tokenizers.Tokenizer` of Qwen2 for a byte-level vocabulary and its merges."""
    tokenizer = Tokenizer(BPE(vocab, merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    if special:
        tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    if added:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    return tokenizer


def _from_gguf(path: str) -> Tokenizer:
    info = read_gguf_tokenizer(path)
    if info.model != "gpt2" or not info.merges:
        raise TokenizerError(
            f"Qwen2Tokenizer: {path} does not hold a byte-level BPE vocabulary with merges "
            f"(tokenizer.ggml.model {info.model!r}); expected a Qwen2 GGUF"
        )
    # every token keeps its GGUF id; control tokens become special (split out of texts, skipped when
    # decoding with skip_special_tokens), user-defined ones plain added tokens
    vocab = {t: i for i, t in enumerate(info.tokens)}
    special = [t for t, k in zip(info.tokens, info.token_types) if k == CONTROL]
    added = [t for t, k in zip(info.tokens, info.token_types) if k == USER_DEFINED]
    merges = [tuple(m.split(" ", 1)) for m in info.merges]
    return build_qwen2_backend(vocab, merges, special, added)


def _from_vocab_merges(vocab_file: str, merges_file: str) -> Tokenizer:
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    if not isinstance(vocab, dict):
        raise TokenizerError(f"Qwen2Tokenizer: {vocab_file} must be a JSON object of token -> id (vocab.json)")
    merges = []
    with open(merges_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line or line.startswith("#version"):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise TokenizerError(
                    f"Qwen2Tokenizer: {merges_file}, line {number}: expected 'left right', got {line!r}"
                )
            merges.append((parts[0], parts[1]))
    next_id = max(vocab.values()) + 1
    special = list(SPECIAL_TOKENS)
    for token in special:  # vocab.json leaves the special tokens out; they follow the regular ids
        if token not in vocab:
            vocab[token] = next_id
            next_id += 1
    return build_qwen2_backend(vocab, merges, special)


class Qwen2Tokenizer(PretrainedTokenizerFast):
    """Qwen2 tokenizer.

    Args:
        vocab_file: `vocab.json` (with `merges_file`) or a `.gguf` file; unused when `tokenizer_file` is given.
        merges_file: `merges.txt` for a `vocab.json`.
        tokenizer_file: a Hugging Face `tokenizer.json`.
        eos_token / pad_token: `<|endoftext|>` (base models); the instruct models end turns with
            `<|im_end|>`. No BOS is added (Qwen2 has none), `unk_token` is None (byte-level BPE
            covers every input).
        **kwargs: `model_max_length`, `chat_template` (default: ChatML) and the other options of
            `PretrainedTokenizerFast`.
    """

    vocab_files_names = {"vocab_file": "vocab.json", "merges_file": "merges.txt", "tokenizer_file": "tokenizer.json"}
    default_chat_template = QWEN2_CHAT_TEMPLATE

    def __init__(
        self,
        vocab_file: str | None = None,
        merges_file: str | None = None,
        tokenizer_file: str | None = None,
        unk_token: str | None = None,
        bos_token: str | None = None,
        eos_token: str = "<|endoftext|>",
        pad_token: str = "<|endoftext|>",
        **kwargs,
    ):
        kwargs.setdefault("chat_template", QWEN2_CHAT_TEMPLATE)
        self.vocab_file, self.merges_file = vocab_file, merges_file
        super().__init__(
            tokenizer_file=tokenizer_file,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            vocab_file=vocab_file,
            merges_file=merges_file,
            **kwargs,
        )

    def _backend_from_other_files(self, kwargs: dict) -> Tokenizer | None:
        vocab_file, merges_file = kwargs.get("vocab_file"), kwargs.get("merges_file")
        if not vocab_file:
            raise TokenizerError(
                "Qwen2Tokenizer needs tokenizer_file (tokenizer.json) or vocab_file (vocab.json or .gguf)"
            )
        if not os.path.isfile(vocab_file):
            raise TokenizerError(f"Qwen2Tokenizer: vocab_file {str(vocab_file)!r} is not a file")
        if str(vocab_file).endswith(".gguf"):
            return _from_gguf(str(vocab_file))
        if not merges_file or not os.path.isfile(merges_file):
            raise TokenizerError(
                f"Qwen2Tokenizer: vocab_file {str(vocab_file)!r} needs merges_file (merges.txt); got {merges_file!r}"
            )
        return _from_vocab_merges(str(vocab_file), str(merges_file))


# The Qwen2 family, registered once. Qwen2 is Llama with q/k/v biases, which the Llama key maps already
# name, and the Llama layer layout (same parallel plan).
QWEN2_SPEC = MindFormerRegister.register_model_spec(
    ModelSpec(
        name="qwen2",
        config_class=Qwen2Config,
        model_classes=(Qwen2ForCausalLM,),
        tokenizer_classes=(Qwen2Tokenizer,),
        hf_key_map=LLAMA_HF_KEY_MAP,
        hf_architectures=("Qwen2ForCausalLM",),
        # llama.cpp's Qwen2Model keeps Hugging Face's q/k row order (no permutation to undo)
        gguf=GGUFArch("qwen2", LLAMA_GGUF_KEY_MAP, permuted_qk=False, ignored=("rope_freqs.weight",)),
        # llama.cpp names Qwen2's pre-tokenizer "qwen2" in GGUF files (llama-vocab.cpp): the regex above, NFC
        pretokenizers={"qwen2": PreTokenizer(PRETOKENIZE_REGEX, nfc=True)},
        parallel=LLAMA_PARALLEL,
        # llama.cpp's Qwen2 test vocabulary and its reference vectors
        assets=llama_cpp_vocab("qwen2"),
    )
)
