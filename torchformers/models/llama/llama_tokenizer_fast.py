"""`LlamaTokenizerFast`: the Llama 2 tokenizer on the Rust `tokenizers` library.

Follows MindFormers' `mindformers/models/llama/llama_tokenizer_fast.py` (Hugging Face's
`LlamaTokenizerFast`). It loads a `tokenizer.json`, or, when only the sentencepiece `tokenizer.model`
exists, converts it: `sentencepiece_to_tokenizer` rebuilds the BPE vocabulary and merges from the
sentencepiece pieces (merges ordered by the score of the merged piece, which is the order
sentencepiece's BPE applies them), with byte fallback, the dummy-prefix normalizer and the matching
decoder, the same pipeline as Hugging Face's `LlamaConverter`. BOS/EOS are added by a
`TemplateProcessing` post-processor kept in step with `add_bos_token` / `add_eos_token`.
"""

from __future__ import annotations

import os

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
from tokenizers.models import BPE

from torchformers.models.llama.llama_tokenizer import LLAMA2_CHAT_TEMPLATE, BosEosMixin, LlamaTokenizer
from torchformers.models.tokenization_utils_base import TokenizerError
from torchformers.models.tokenization_utils_fast import PretrainedTokenizerFast
from torchformers.tools.register import MindFormerModuleType, MindFormerRegister

__all__ = ["LlamaTokenizerFast", "sentencepiece_to_tokenizer"]

# sentencepiece piece types (sentencepiece_model.proto)
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6


def sentencepiece_to_tokenizer(model_file: str | os.PathLike) -> Tokenizer:
    """A `tokenizers.Tokenizer` equivalent to the sentencepiece BPE model in `model_file`."""
    from sentencepiece import sentencepiece_model_pb2  # start-up time: loads protobuf, needed only here

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        with open(model_file, "rb") as f:
            proto.ParseFromString(f.read())
    except Exception as err:
        raise TokenizerError(f"{model_file} is not a sentencepiece model: {err}") from None
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        raise TokenizerError(
            f"{model_file}: only sentencepiece BPE models convert to a fast Llama tokenizer "
            f"(model_type {proto.trainer_spec.model_type}, expected BPE=2)"
        )
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    # Merges: every split of a normal piece into two known pieces, best-scored result first.
    candidates = []
    for piece in proto.pieces:
        if piece.type != _NORMAL or len(piece.piece) < 2:
            continue
        text = piece.piece
        local = [(text[:k], text[k:]) for k in range(1, len(text)) if text[:k] in vocab and text[k:] in vocab]
        local.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        candidates.extend((piece.score, left, right) for left, right in local)
    candidates.sort(key=lambda c: c[0], reverse=True)  # stable: ties keep the order above
    merges = [(left, right) for _, left, right in candidates]
    unk = proto.pieces[proto.trainer_spec.unk_id].piece
    tokenizer = Tokenizer(
        BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback)
    )
    spec = proto.normalizer_spec
    steps = [normalizers.Prepend("▁")] if spec.add_dummy_prefix else []
    steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tokenizer.decoder = decoders.Sequence(steps)
    tokenizer.add_special_tokens(
        [AddedToken(p.piece, special=True, normalized=False) for p in proto.pieces if p.type in (_UNKNOWN, _CONTROL)]
    )
    user = [AddedToken(p.piece, special=False, normalized=False) for p in proto.pieces if p.type == _USER_DEFINED]
    if user:
        tokenizer.add_tokens(user)
    return tokenizer


@MindFormerRegister.register(MindFormerModuleType.TOKENIZER)
class LlamaTokenizerFast(BosEosMixin, PretrainedTokenizerFast):
    """Llama 2 tokenizer on `tokenizers`, from `tokenizer.json` or converted from `tokenizer.model`.

    Args:
        vocab_file: the sentencepiece `tokenizer.model` (used when no `tokenizer_file` is given).
        tokenizer_file: a `tokenizer.json`.
        unk_token, bos_token, eos_token, pad_token: special tokens (pad defaults to "<unk>", as
            `LlamaTokenizer`, so both pad batches identically).
        add_bos_token / add_eos_token: BOS before / EOS after every sequence (True / False).
    """

    vocab_files_names = {"vocab_file": "tokenizer.model", "tokenizer_file": "tokenizer.json"}
    slow_tokenizer_class = LlamaTokenizer
    padding_side = "right"
    model_input_names = ["input_ids", "attention_mask"]
    default_chat_template = LLAMA2_CHAT_TEMPLATE

    def __init__(
        self,
        vocab_file: str | None = None,
        tokenizer_file: str | None = None,
        clean_up_tokenization_spaces: bool = False,
        unk_token: str = "<unk>",
        bos_token: str = "<s>",
        eos_token: str = "</s>",
        pad_token: str | None = "<unk>",
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        use_default_system_prompt: bool = False,
        **kwargs,
    ):
        self.vocab_file = vocab_file
        self._add_bos_token = add_bos_token
        self._add_eos_token = add_eos_token
        self.use_default_system_prompt = use_default_system_prompt
        super().__init__(
            tokenizer_file=tokenizer_file,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=pad_token,
            add_bos_token=add_bos_token,
            add_eos_token=add_eos_token,
            use_default_system_prompt=use_default_system_prompt,
            **kwargs,
        )
        self.update_post_processor()

    def _backend_from_other_files(self, kwargs: dict) -> Tokenizer | None:
        if self.vocab_file is None:
            return None
        if not os.path.isfile(self.vocab_file):
            raise TokenizerError(f"{type(self).__name__}: vocab_file {self.vocab_file!r} is not a file")
        return sentencepiece_to_tokenizer(self.vocab_file)

    @property
    def add_bos_token(self) -> bool:
        return self._add_bos_token

    @add_bos_token.setter
    def add_bos_token(self, value: bool) -> None:
        self._add_bos_token = value
        self.update_post_processor()

    @property
    def add_eos_token(self) -> bool:
        return self._add_eos_token

    @add_eos_token.setter
    def add_eos_token(self, value: bool) -> None:
        self._add_eos_token = value
        self.update_post_processor()

    def update_post_processor(self) -> None:
        """Make the backend add BOS/EOS as `add_bos_token` / `add_eos_token` say."""
        bos, eos = self.bos_token, self.eos_token
        if self._add_bos_token and bos is None:
            raise TokenizerError("add_bos_token=True needs a bos_token")
        if self._add_eos_token and eos is None:
            raise TokenizerError("add_eos_token=True needs an eos_token")
        head = f"{bos}:0 " if self._add_bos_token else ""
        tail = f" {eos}:0" if self._add_eos_token else ""
        head_b = f" {bos}:1" if self._add_bos_token else ""
        tail_b = f" {eos}:1" if self._add_eos_token else ""
        special = []
        if self._add_bos_token:
            special.append((bos, self.bos_token_id))
        if self._add_eos_token:
            special.append((eos, self.eos_token_id))
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{head}$A:0{tail}", pair=f"{head}$A:0{tail}{head_b} $B:1{tail_b}", special_tokens=special
        )
