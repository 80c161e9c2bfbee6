"""Llama weight names: Hugging Face `LlamaForCausalLM` <-> native (MindFormers) names, and GGUF -> Hugging Face.

MindFormers' Llama uses rotate-half RoPE like Hugging Face's, so the conversion is a rename only:
no transposes and no q/k permutation (MindFormers `mindformers/models/llama/convert_weight.py`).
The bias entries serve external models built on Llama with biased q/k/v projections (research/ folders).

GGUF files name tensors as ggml's `docs/gguf.md` standardizes them (`token_embd`, `blk.N.attn_q`, ...);
`LLAMA_GGUF` reads llama.cpp's "llama" architecture, whose converter permuted the q/k rows.
"""

from torchformers.checkpoint.gguf_io import GGUFArch
from torchformers.checkpoint.key_map import KeyMap

__all__ = ["LLAMA_GGUF", "LLAMA_GGUF_KEY_MAP", "LLAMA_HF_KEY_MAP"]

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
