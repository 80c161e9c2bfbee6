"""The embedded SmolLM2-135M-Instruct loaded from its Q4_1 GGUF kept quantized, against the same file
dequantized to fp32: logits, the greedy answer to the demo question, and the weight memory held."""

import json

import pytest
import torch

from torchformers.checkpoint import gguf_to_native
from torchformers.generation.gguf_quantized import load_gguf_quantized
from torchformers.generation.quantization import Int4WeightOnlyLinear, Int8GroupedLinear, QuantizedEmbedding
from torchformers.models.gguf_tokenizer import convert_gguf_tokenizer
from torchformers.models.llama import LlamaConfig, LlamaForCausalLM
from torchformers.models.tokenization_utils_fast import PretrainedTokenizerFast
from torchformers.tools.assets import fetch

pytest.importorskip("gguf")
pytestmark = pytest.mark.slow  # two 135M models and the GGUF reader: about a minute


def _held_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if not t.is_meta and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2")
    gguf = fetch("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    hf_config = gguf_to_native(gguf, folder / "native.safetensors", dtype="fp32")
    convert_gguf_tokenizer(gguf, folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer = PretrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        **{k: tokenizer_config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template")},
    )
    config = LlamaConfig(**hf_config)
    dequantized = LlamaForCausalLM(config).eval()
    dequantized.load_checkpoint(str(folder / "native.safetensors"))
    with torch.device("meta"):
        kept = LlamaForCausalLM(config)
    load_gguf_quantized(kept, gguf, kernel_dtype=torch.float32)
    return dequantized, kept, tokenizer


def test_q4_1_file_kept_quantized_matches_its_dequantized_model(models):
    dequantized, kept, tokenizer = models
    assert sum(isinstance(m, Int4WeightOnlyLinear) for m in kept.modules()) >= 210  # every Q4_1 projection
    assert isinstance(kept.lm_head, Int8GroupedLinear) and isinstance(kept.model.tok_embeddings, QuantizedEmbedding)
    for prompt in ("The capital of France is", "def fibonacci(n):\n    if n < 2:"):
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            err = (kept(ids) - dequantized(ids)).abs().max().item()
        assert err <= 1e-3, (prompt, err)

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    answers = [
        model.generate([ids], max_new_tokens=24, do_sample=False, eos_token_id=tokenizer.eos_token_id)[0][len(ids) :]
        for model in (kept, dequantized)
    ]
    assert list(answers[0]) == list(answers[1])
    assert "Paris" in tokenizer.decode(list(answers[0]), skip_special_tokens=True)

    # weights held with the kernels' default bf16 activations (bf16 scales and zero points), once their
    # layouts are built: at most a fifth of the fp32 model's parameters (fp32 kernels hold ~23%)
    for module in kept.modules():
        if isinstance(module, Int4WeightOnlyLinear):
            module.kernel_dtype = None
    with torch.no_grad():
        kept(torch.tensor([ids]))
    fp32 = sum(p.numel() * p.element_size() for p in dequantized.parameters())
    assert _held_bytes(kept) <= 0.2 * fp32, (_held_bytes(kept) / 2**20, fp32 / 2**20)
