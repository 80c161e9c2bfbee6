"""The Llama family's `ModelSpec`: everything outside `models/llama/` needs to know about Llama.

Weight conversion, the GGUF reader, tensor / pipeline parallelism and activation checkpointing read
this record; none of them spells a Llama parameter name (see `torchformers.tools.register.spec`).
"""

from torchformers.models.llama.convert_weight import LLAMA_HF_KEY_MAP
from torchformers.models.llama.llama import LlamaForCausalLM
from torchformers.models.llama.llama_config import LlamaConfig
from torchformers.models.llama.llama_tokenizer import LlamaTokenizer
from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast
from torchformers.tools.register import MindFormerRegister, ModelSpec, ParallelSpec

__all__ = ["LLAMA_PARALLEL", "LLAMA_SPEC"]

# Megatron sharding (MindFormers' model_parallel, torchtitan's apply_tp): q/k/v and gate/up split by
# output features, the output projections by input features; norms whole (or split over the sequence).
LLAMA_PARALLEL = ParallelSpec(
    layers="model.layers",
    first_stage=("model.tok_embeddings",),
    last_stage=("model.norm_out", "lm_head"),
    embedding=("model.tok_embeddings", "embedding_weight"),
    head="lm_head",
    final_norm="model.norm_out",
    tp_plan={
        "attention.wq": "colwise",
        "attention.wk": "colwise",
        "attention.wv": "colwise",
        "attention.wo": "rowwise",
        "feed_forward.w1": "colwise",
        "feed_forward.w3": "colwise",
        "feed_forward.w2": "rowwise",
        "attention_norm": "norm",
        "ffn_norm": "norm",
    },
    tp_divide={"attention": ("n_heads", "n_kv_heads")},
    tp_divisible=("num_heads", "kv_heads", "ffn_hidden_size"),
)

LLAMA_SPEC = MindFormerRegister.register_model_spec(
    ModelSpec(
        name="llama",
        config_class=LlamaConfig,
        model_classes=(LlamaForCausalLM,),
        tokenizer_classes=(LlamaTokenizer, LlamaTokenizerFast),
        hf_key_map=LLAMA_HF_KEY_MAP,
        hf_architectures=("LlamaForCausalLM",),
        parallel=LLAMA_PARALLEL,
    )
)
