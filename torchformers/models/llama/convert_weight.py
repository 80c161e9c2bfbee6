"""Llama weight names: Hugging Face `LlamaForCausalLM` <-> native (MindFormers) names, and GGUF -> Hugging Face.

MindFormers' Llama uses rotate-half RoPE like Hugging Face's, so the conversion is a rename only:
no transposes and no q/k permutation (MindFormers `mindformers/models/llama/convert_weight.py`).
The bias entries serve external models built on Llama with biased q/k/v projections (research/ folders).

`LLAMA_FUSED` is MindFormers' `qkv_concat` layout (`mindformers/utils/convert_utils.py` `qkv_concat_hf2mg` /
`ffn_concat_hf2mg`, the split in `llama_transformer.py` / `llama_layer.py`, MindFormers 1.5 and later):
`attention.w_qkv` rows are grouped by key/value head, each group `[q rows of its n_rep query heads; k rows;
v rows]`; `feed_forward.w_gate_hidden` rows alternate `w1` row i, `w3` row i.

GGUF files name tensors as ggml's `docs/gguf.md` standardizes them (`token_embd`, `blk.N.attn_q`, ...);
`LLAMA_GGUF` reads llama.cpp's "llama" architecture, whose converter permuted the q/k rows.
"""

import torch

from torchformers.checkpoint.fused import Fused, FusedWeights
from torchformers.checkpoint.gguf_io import GGUFArch
from torchformers.checkpoint.key_map import KeyMap

__all__ = ["LLAMA_FUSED", "LLAMA_GGUF", "LLAMA_GGUF_KEY_MAP", "LLAMA_HF_KEY_MAP"]

LLAMA_HF_KEY_MAP = KeyMap(
    {
        "model.embed_tokens.weight": "model.tok_embeddings.embedding_weight",
        "model.layers.{}.input_layernorm.weight": "model.layers.{}.attention_norm.weight",
        "model.layers.{}.self_attn.q_proj.weight": "model.layers.{}.attention.wq.weight",
        "model.layers.{}.self_attn.k_proj.weight": "model.layers.{}.attention.wk.weight",
        "model.layers.{}.self_attn.v_proj.weight": "model.layers.{}.attention.wv.weight",
        "model.layers.{}.self_attn.q_proj.bias": "model.layers.{}.attention.wq.bias",
        "model.layers.{}.self_attn.k_proj.bias": "model.layers.{}.attention.wk.bias",
        "model.layers.{}.self_attn.v_proj.bias": "model.layers.{}.attention.wv.bias",
        "model.layers.{}.self_attn.o_proj.weight": "model.layers.{}.attention.wo.weight",
        "model.layers.{}.post_attention_layernorm.weight": "model.layers.{}.ffn_norm.weight",
        "model.layers.{}.mlp.gate_proj.weight": "model.layers.{}.feed_forward.w1.weight",
        "model.layers.{}.mlp.down_proj.weight": "model.layers.{}.feed_forward.w2.weight",
        "model.layers.{}.mlp.up_proj.weight": "model.layers.{}.feed_forward.w3.weight",
        "model.norm.weight": "model.norm_out.weight",
        "lm_head.weight": "lm_head.weight",
    },
    name="llama",
)

# GGUF tensor names -> Hugging Face names (ggml docs/gguf.md "Standardized tensor names").
LLAMA_GGUF_KEY_MAP = KeyMap(
    {
        "token_embd.weight": "model.embed_tokens.weight",
        "blk.{}.attn_norm.weight": "model.layers.{}.input_layernorm.weight",
        "blk.{}.attn_q.weight": "model.layers.{}.self_attn.q_proj.weight",
        "blk.{}.attn_k.weight": "model.layers.{}.self_attn.k_proj.weight",
        "blk.{}.attn_v.weight": "model.layers.{}.self_attn.v_proj.weight",
        "blk.{}.attn_q.bias": "model.layers.{}.self_attn.q_proj.bias",
        "blk.{}.attn_k.bias": "model.layers.{}.self_attn.k_proj.bias",
        "blk.{}.attn_v.bias": "model.layers.{}.self_attn.v_proj.bias",
        "blk.{}.attn_output.weight": "model.layers.{}.self_attn.o_proj.weight",
        "blk.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
        "blk.{}.ffn_gate.weight": "model.layers.{}.mlp.gate_proj.weight",
        "blk.{}.ffn_down.weight": "model.layers.{}.mlp.down_proj.weight",
        "blk.{}.ffn_up.weight": "model.layers.{}.mlp.up_proj.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    },
    name="gguf",
)

LLAMA_GGUF = GGUFArch("llama", LLAMA_GGUF_KEY_MAP, permuted_qk=True, ignored=("rope_freqs.weight",))


def _qkv_groups(config) -> tuple[int, int, int]:
    """(key/value heads, query heads per group, head size) of a Llama config."""
    heads = config.num_heads
    kv_heads = getattr(config, "n_kv_heads", None) or heads
    head_size = getattr(config, "head_dim", None) or config.hidden_size // heads
    return kv_heads, heads // kv_heads, head_size


def _split_qkv(w_qkv: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kv_heads, rep, size = _qkv_groups(config)
    grouped = w_qkv.reshape(kv_heads, (rep + 2) * size, *w_qkv.shape[1:])  # (kv_heads, [q; k; v] rows, ...)
    q, k, v = grouped.split([rep * size, size, size], dim=1)
    return tuple(t.reshape(-1, *w_qkv.shape[1:]).contiguous() for t in (q, k, v))


def _fuse_qkv(parts, config) -> torch.Tensor:
    kv_heads, rep, size = _qkv_groups(config)
    q, k, v = (t.reshape(kv_heads, -1, *t.shape[1:]) for t in parts)
    return torch.cat([q, k, v], dim=1).reshape(-1, *parts[0].shape[1:])


def _split_gate_hidden(w: torch.Tensor, config) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = w.reshape(-1, 2, *w.shape[1:])  # (ffn, [w1 row; w3 row], hidden)
    return pairs[:, 0].contiguous(), pairs[:, 1].contiguous()


def _fuse_gate_hidden(parts, config) -> torch.Tensor:
    return torch.stack(list(parts), dim=1).reshape(-1, *parts[0].shape[1:])


_QKV = ("model.layers.{}.attention.wq", "model.layers.{}.attention.wk", "model.layers.{}.attention.wv")
LLAMA_FUSED = FusedWeights(
    [
        Fused("model.layers.{}.attention.w_qkv.weight", tuple(f"{p}.weight" for p in _QKV), _split_qkv, _fuse_qkv),
        Fused("model.layers.{}.attention.w_qkv.bias", tuple(f"{p}.bias" for p in _QKV), _split_qkv, _fuse_qkv),
        Fused(
            "model.layers.{}.feed_forward.w_gate_hidden.weight",
            ("model.layers.{}.feed_forward.w1.weight", "model.layers.{}.feed_forward.w3.weight"),
            _split_gate_hidden,
            _fuse_gate_hidden,
        ),
    ]
)
