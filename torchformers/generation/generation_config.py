"""`GenerationConfig`: the knobs of `generate` (MindFormers `mindformers/generation/generation_config.py`).

Defaults are MindFormers'; `from_model_config` copies matching fields of the model config, so a
`LlamaConfig` (top_k=5, do_sample=True, max_decode_length=1024) sets the generation defaults unless
the YAML or the call says otherwise. Two PyTorch additions: `use_past` defaults to True (the static
KV cache costs only memory; pass `use_past=False` to recompute the whole sequence each step) and
`compile_decode` wraps the one-token decode step in `torch.compile` (the KV cache is then kept
between calls so the compiled step is reused; `model.clear_kv_cache()` frees it). On CPU,
`prepare_for_cpu_inference` is the faster route and the two do not combine. `num_beams > 1` selects
beam search (`length_penalty`, `early_stopping` True/False/"never", `num_return_sequences`, with
transformers' meanings; see `beam_search.py`).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["GenerationConfig"]

_DEFAULTS: dict[str, Any] = {
    "max_length": 20,
    "max_new_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "num_beams": 1,
    "length_penalty": 1.0,
    "early_stopping": False,
    "num_return_sequences": 1,
    "do_sample": False,
    "use_past": True,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "renormalize_logits": False,
    "return_dict_in_generate": False,
    "output_scores": False,
    "output_logits": False,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": [],
    "parallel_decoding": False,
    "window_size": 5,
    "level": 5,
    "guess_set_size": 3,
    "compile_decode": False,
}


def token_id_list(value) -> list[int]:
    """An `eos_token_id`-style setting (None, one id, or a list of ids) as a list of ids."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


class GenerationConfig:
    """Generation settings; unknown keyword arguments are kept as attributes (as MindFormers does)."""

    def __init__(self, **kwargs: Any) -> None:
        for key, default in _DEFAULTS.items():
            setattr(self, key, copy.deepcopy(kwargs.pop(key, default)))
        if "max_decode_length" in kwargs:
            self.max_length = kwargs.pop("max_decode_length")
        for key, value in kwargs.items():
            setattr(self, key, value)

    @classmethod
    def from_model_config(cls, model_config: Any) -> GenerationConfig:
        """Take the generation fields a model config holds (max_decode_length -> max_length)."""
        source = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
        kwargs = {k: source[k] for k in _DEFAULTS if k in source and k != "use_past"}
        if source.get("max_decode_length") is not None:
            kwargs["max_length"] = source["max_decode_length"]
        if kwargs.get("pad_token_id") is None:
            kwargs["pad_token_id"] = 0
        return cls(**kwargs)

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the fields named in `kwargs`; return the ones that are not generation fields."""
        unused = {}
        for key, value in kwargs.items():
            if key in _DEFAULTS or hasattr(self, key):
                setattr(self, key, value)
            else:
                unused[key] = value
        return unused

    @property
    def eos_token_ids(self) -> list[int]:
        return token_id_list(self.eos_token_id)

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def __repr__(self) -> str:
        return f"GenerationConfig {self.to_dict()}"
