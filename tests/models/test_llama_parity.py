"""Parity of `LlamaForCausalLM` with Hugging Face transformers' on tiny random configs.

Same weights (copied through LLAMA_HF_KEY_MAP by `load_checkpoint`): logits, greedy generation of a
batch of prompts of different lengths, training loss, and KV-cache decode against full recomputation.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchformers.models import LlamaConfig, LlamaForCausalLM  # noqa: E402

BASE = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=112,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    rms_norm_eps=1e-6,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

VARIANTS = {
    "mha": {},
    "gqa": {"num_key_value_heads": 2},
    "mqa_tied": {"num_key_value_heads": 1, "tie_word_embeddings": True},
    "llama3_rope": {
        "num_key_value_heads": 2,
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    },
    "head_dim_32": {"num_key_value_heads": 2, "head_dim": 32},
    "linear_rope": {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
    "dynamic_ntk": {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}},
    "yarn": {
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    },
}


def build_pair(variant: str, seed: int = 0):
    """A random HF Llama (weights with a larger spread than HF's init, so greedy picks are clear) and ours."""
    torch.manual_seed(seed)
    hf_config = transformers.LlamaConfig(**{**BASE, **VARIANTS[variant]})
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.15)
    ours = LlamaForCausalLM(LlamaConfig(**hf_config.to_dict())).eval()
    report = ours.load_checkpoint(hf.state_dict())
    assert report.ok and report.renamed_from_hf
    return hf, ours


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(variant):
    hf, ours = build_pair(variant)
    ids = torch.randint(3, BASE["vocab_size"], (2, 40))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ours(ids)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("variant", ["gqa", "mqa_tied", "llama3_rope", "head_dim_32"])
def test_greedy_generation_matches_transformers(variant):
    hf, ours = build_pair(variant, seed=1)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, BASE["vocab_size"], (n,), generator=g).tolist() for n in (5, 11, 8)]
    width = max(map(len, prompts))
    padded = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    reference = hf.generate(
        padded, attention_mask=mask, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0
    )
    # both sides forbid eos (id 2) until 32 tokens are out, so all 32 are compared
    got = ours.generate(prompts, max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=2)
    for i, p in enumerate(prompts):
        assert got[i].tolist() == p + reference[i, width:].tolist()
    # the recompute path (no KV cache) gives the same tokens
    again = ours.generate(
        prompts, max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=2, use_past=False
    )
    assert [a.tolist() for a in again] == [a.tolist() for a in got]


@pytest.mark.parametrize("variant", ["gqa", "mqa_tied"])
def test_training_loss_matches_transformers(variant):
    hf, ours = build_pair(variant)
    seq_length = 24
    ids = torch.randint(3, BASE["vocab_size"], (3, seq_length + 1))
    ids[0, -4:] = 0  # padding at the end of a sample: excluded as inputs
    labels = ids.clone()
    labels[1, 5:9] = -100  # masked labels (e.g. the prompt of a fine-tuning sample)
    # Hugging Face's equivalent: a label is ignored where it is -100 or its input token is pad
    hf_labels = labels.clone()
    hf_labels[:, 1:][ids[:, :-1] == 0] = -100
    expected = hf(ids, labels=hf_labels).loss
    ours.train()
    got = ours(ids, labels)
    assert got.dim() == 0
    assert abs(got.item() - expected.item()) <= 1e-5
    got.backward()
    expected.backward()
    # gradients through the chunked lm_head + cross-entropy and the rest of the model
    pairs = [(ours.lm_head.weight, hf.lm_head.weight), (ours.model.norm_out.weight, hf.model.norm.weight),
             (ours.model.layers[0].attention.wq.weight, hf.model.layers[0].self_attn.q_proj.weight)]  # fmt: skip
    for mine, theirs in pairs:
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6)
    # the same loss in eval mode, without gradients, for validation / perplexity
    ours.eval()
    with torch.no_grad():
        per_token, mask = ours.compute_loss(ids, labels, reduction="none")
        assert per_token.shape == mask.shape == (3, seq_length)
        assert abs((per_token.sum() / mask.sum()).item() - expected.item()) <= 1e-5
        assert abs(ours.compute_loss(ids, labels).item() - expected.item()) <= 1e-5


@pytest.mark.parametrize("variant", ["gqa", "llama3_rope"])
def test_kv_cache_decode_matches_full_recompute(variant):
    _, ours = build_pair(variant)
    B, prompt, steps = 2, 9, 6
    ids = torch.randint(3, BASE["vocab_size"], (B, prompt + steps))
    with torch.no_grad():
        full = ours(ids)  # (B, T, vocab)
        ours.setup_kv_cache(B, 32)
        valid = torch.zeros(B, 32, dtype=torch.bool)
        valid[:, :prompt] = True
        causal = torch.arange(32)[None, :] <= torch.arange(prompt)[:, None]
        positions = torch.arange(prompt).expand(B, prompt)
        logits = ours.forward_with_cache(
            ids[:, :prompt], positions, torch.arange(prompt), causal[None, None] & valid[:, None, None]
        )
        assert (logits - full[:, prompt - 1]).abs().max().item() <= 1e-4
        for t in range(prompt, prompt + steps):
            valid[:, t] = True
            pos = torch.full((B, 1), t)
            logits = ours.forward_with_cache(ids[:, t : t + 1], pos, torch.tensor([t]), valid[:, None, None, :])
            assert (logits - full[:, t]).abs().max().item() <= 1e-4
        ours.clear_kv_cache()
    assert "key_cache" not in " ".join(ours.state_dict())


def test_forward_accepts_mindformers_arguments():
    _, ours = build_pair("gqa")
    ids = torch.randint(3, BASE["vocab_size"], (2, 10))
    with torch.no_grad():
        full = ours(ids)
        # positional order of MindFormers' construct; Ascend-only inputs are ignored
        same = ours(ids, None, None, None, None, None, None, None, None, None, None, torch.ones(20))
        # the same by keyword
        same_kw = ours(ids, None, None, None, None, None, init_reset=None, slot_mapping=torch.ones(20), q_seq_lens=None)
        last = ours(ids, batch_valid_length=torch.tensor([10, 6]))
        # inputs with no PyTorch implementation are accepted as None only
        none = ours(ids, prefix_keys_values=None, gather_index=None, seq_range=None, actual_seq_len=None)
    assert torch.equal(full, same) and torch.equal(full, same_kw) and torch.equal(full, none)
    assert torch.allclose(last[0], full[0, 9], atol=1e-5) and torch.allclose(last[1], full[1, 5], atol=1e-5)
    with pytest.raises(NotImplementedError, match="prefix_keys_values"):
        ours(ids, prefix_keys_values=torch.zeros(1))
    with pytest.raises(NotImplementedError, match="actual_seq_len"):
        ours(ids, actual_seq_len=torch.zeros(1))
    # an unknown keyword is named; more positional inputs than MindFormers' construct takes are refused
    with pytest.raises(TypeError, match="'block_table'"):
        ours(ids, block_table=None)
    with pytest.raises(TypeError, match="positional"):
        ours(ids, *([None] * 19))
    with pytest.raises(TypeError, match="multiple values"):
        ours(ids, None, None, None, None, None, None, torch.tensor([10, 6]), batch_valid_length=torch.tensor([1, 1]))
