"""`Qwen2ForCausalLM`: Qwen2 as external code, reusing torchformers' Llama implementation.

Following the guide ("if your model's structure is very close to one in the library, reuse its
implementation"), the network is `LlamaForCausalLM`: the q/k/v biases, the RoPE base and the tied
embeddings are switched on by `Qwen2Config`. Parameter names are the native (MindFormers) ones
(`model.layers.N.attention.wq.weight` / `.bias`, ...); a Hugging Face Qwen2 checkpoint loads through
the Llama key map, whose q/k/v bias entries cover Qwen2's `q_proj.bias` / `k_proj.bias` / `v_proj.bias`:

    model = Qwen2ForCausalLM(Qwen2Config.from_pretrained("Qwen2-0.5B-Instruct/"))
    model.load_checkpoint("Qwen2-0.5B-Instruct/model.safetensors")

Registered only through `auto_register` (`arch: {type: Qwen2ForCausalLM, auto_register:
qwen2_model.Qwen2ForCausalLM}`) with `--register_path research/qwen2`.

The family's weight names (the key map, the GGUF architecture) are registered with the rest of the
family in one `ModelSpec`, in `qwen2_tokenizer.py` (see there).
"""

from __future__ import annotations

from qwen2_config import Qwen2Config

from torchformers.models.llama.llama import LlamaForCausalLM

__all__ = ["Qwen2ForCausalLM"]


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 with a language-model head: MindFormers' `LlamaForCausalLM` interface
    (`forward`, `generate`, `prepare_inputs_for_generation`, `prepare_inputs_for_predict_layout`)."""

    config_class = Qwen2Config
    _support_list = Qwen2Config._support_list

    def __init__(self, config: Qwen2Config) -> None:
        if not isinstance(config, Qwen2Config):
            # a LlamaConfig would silently drop Qwen2's biases: refuse it by name
            raise TypeError(
                f"Qwen2ForCausalLM(config): expected a Qwen2Config, got {type(config).__name__} "
                "(model.model_config.type must be Qwen2Config)"
            )
        super().__init__(config)
