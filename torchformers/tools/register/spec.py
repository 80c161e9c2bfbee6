"""`ModelSpec`: everything the library needs to know about one model family, in one record.

A family (Llama in the library, or one in a `research/` folder) describes itself once and registers with
`MindFormerRegister.register_model_spec(spec)`; that one call registers its config, model and
tokenizer classes under their YAML `type:` names too. Everything outside the family's own folder
asks the spec instead of spelling the family's parameter names:

* weight conversion (`convert_weight.py --model NAME`) and `from_pretrained` rename through
  `hf_key_map`;
* the GGUF reader picks the spec whose `gguf.name` is the file's `general.architecture`, and the
  GGUF tokenizer converter looks `tokenizer.ggml.pre` up in the specs' `pretokenizers`;
* `torchformers.parallel` shards with `parallel.tp_plan`, cuts pipeline stages at
  `parallel.layers` (dropping `parallel.first_stage` / `parallel.last_stage` modules on the other
  stages) and checkpoints the activations of `parallel.layers`;
* the asset fetcher (`python -m torchformers.tools.assets`) serves the files in `assets`.

The record holds objects defined in higher layers (key maps, GGUF descriptions, assets); this
module only stores them, so it imports nothing from the rest of the package (torchtitan's
`TrainSpec`, one record per model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelSpec", "ParallelSpec"]


@dataclass(frozen=True)
class ParallelSpec:
    """Where parallelism applies, as dotted module paths relative to the model (`nn.Module.get_submodule`).

    Attributes:
        layers: the repeated decoder blocks (an `nn.ModuleList`): activation checkpointing, FSDP units,
            `torch.compile` units and pipeline split points.
        first_stage: modules only the first pipeline stage runs (the embedding).
        last_stage: modules only the last pipeline stage runs (the final norm, the head).
        embedding: the token embedding and the name of its weight, split over the vocabulary when
            `parallel_config.vocab_emb_dp` is False.
        head: the output projection, split over the vocabulary with it.
        final_norm: the norm after the last layer (sequence-parallel with `use_seq_parallel`).
        tp_plan: per decoder layer, a submodule path -> "colwise" | "rowwise" | "norm" (Megatron
            column/row sharding; norms replicated, or sequence-parallel).
        tp_divide: per decoder layer, a submodule path -> attributes holding head counts that become the
            local counts (divided by the tensor-parallel degree).
        tp_divisible: config attributes that must split evenly over the tensor-parallel ranks.
    """

    layers: str = "model.layers"
    first_stage: tuple[str, ...] = ()
    last_stage: tuple[str, ...] = ()
    embedding: tuple[str, str] | None = None
    head: str | None = None
    final_norm: str | None = None
    tp_plan: Mapping[str, str] = field(default_factory=dict)
    tp_divide: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    tp_divisible: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """One model family.

    Attributes:
        name: the family's name: `convert_weight.py --model NAME`, `compare --model NAME`.
        config_class: its `PretrainedConfig` subclass (registered under CONFIG).
        model_classes: its `PretrainedModel` subclasses (registered under MODELS); the first is the
            causal-LM class `from_pretrained` and the converters build.
        tokenizer_classes: its tokenizers (registered under TOKENIZER).
        hf_key_map: a `KeyMap` from Hugging Face parameter names to native (MindFormers) ones.
        hf_architectures: the `architectures` names of Hugging Face `config.json` files it reads.
        fused_weights: a `FusedWeights` (MindFormers' `qkv_concat` parameters split on load, fused by
            `convert_weight.py --qkv_concat True`), or None.
        gguf: a `GGUFArch` (GGUF tensor names -> Hugging Face names and the q/k layout), or None.
        gguf_tokenizers: GGUF `tokenizer.ggml.model` ("llama", "gpt2") -> the tokenizer class that
            `tokenizer_from_gguf` builds for files of this architecture.
        pretokenizers: GGUF `tokenizer.ggml.pre` names -> `PreTokenizer` settings (split regex, digits,
            normalizer) of the vocabularies this family uses.
        parallel: where tensor / pipeline parallelism and activation checkpointing apply.
        assets: asset name -> `Asset`: tokenizers, weights and reference vectors from package registries.
    """

    name: str
    config_class: type
    model_classes: tuple[type, ...]
    tokenizer_classes: tuple[type, ...] = ()
    hf_key_map: Any = None
    hf_architectures: tuple[str, ...] = ()
    fused_weights: Any = None
    gguf: Any = None
    gguf_tokenizers: Mapping[str, type] = field(default_factory=dict)
    pretokenizers: Mapping[str, Any] = field(default_factory=dict)
    parallel: ParallelSpec = field(default_factory=ParallelSpec)
    assets: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_class(self) -> type:
        return self.model_classes[0]
