"""The serving engine (continuous batching over a paged KV cache) against `generate`, the reference.

A request's greedy tokens must not depend on what else runs beside it, on the chunk size its prompt is
prefilled in, on the blocks it gets, on cached prefixes, or on preemption; its log-probabilities are
the model's own.
"""

from __future__ import annotations

import asyncio
import random

import pytest
import torch

from torchformers.generation.engine import AsyncLLMEngine, EngineError, LLMEngine, SamplingParams
from torchformers.generation.paged_cache import BlockAllocator, block_hashes
from torchformers.models import LlamaConfig, LlamaForCausalLM

VOCAB = 128
EOS = 2


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=48, num_layers=2, num_heads=4, n_kv_heads=2, intermediate_size=96,
                      seq_length=128, compute_dtype="float32", param_init_type="float32", init_method_std=0.3,
                      pad_token_id=0, bos_token_id=1, eos_token_id=EOS)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model() -> LlamaForCausalLM:
    return tiny_model()


def reference(model, prompt: list[int], max_new: int, ignore_eos: bool = True) -> list[int]:
    eos = [] if ignore_eos else [EOS]
    out = model.generate([prompt], max_new_tokens=max_new, do_sample=False, eos_token_id=eos or [-1])
    return [int(t) for t in out[0][len(prompt) :]]


def run_all(engine: LLMEngine, requests: dict[str, tuple[list[int], SamplingParams]], arrivals=None) -> dict:
    """Step the engine until every request finishes; `arrivals[id]` is the step a request is added at."""
    arrivals = arrivals or {}
    tokens = {rid: [] for rid in requests}
    outputs = {rid: [] for rid in requests}
    step = 0
    pending = dict(requests)
    while pending or engine.has_unfinished_requests():
        for rid in [r for r in pending if arrivals.get(r, 0) <= step]:
            prompt, params = pending.pop(rid)
            engine.add_request(rid, prompt, params)
        for out in engine.step():
            tokens[out.request_id].extend(out.token_ids)
            outputs[out.request_id].append(out)
        step += 1
        assert step < 10_000
    return {"tokens": tokens, "outputs": outputs}


def prompts(n: int, seed: int = 0, low: int = 3, high: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, VOCAB) for _ in range(rng.randrange(low, high))] for _ in range(n)]


@pytest.mark.parametrize(
    "block_size,budget,max_num_seqs",
    [(16, 512, 16), (4, 7, 3), (1, 64, 8)],
    ids=["default", "tiny-chunks", "block-1"],
)
def test_greedy_equals_generate_whatever_runs_beside(model, block_size, budget, max_num_seqs):
    engine = LLMEngine(model, eos_token_ids=[EOS], block_size=block_size, max_num_batched_tokens=budget,
                       max_num_seqs=max_num_seqs)  # fmt: skip
    ps = prompts(10)
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    requests = {f"r{i}": (p, params) for i, p in enumerate(ps)}
    arrivals = {f"r{i}": 2 * i for i in range(len(ps))}  # requests join while others decode
    got = run_all(engine, requests, arrivals)["tokens"]
    for i, p in enumerate(ps):
        assert got[f"r{i}"] == reference(model, p, 12), f"request {i}"
    stats = engine.stats()
    assert stats.num_running == stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_blocks


def test_eos_stops_and_length_finishes(model):
    engine = LLMEngine(model, eos_token_ids=[EOS])
    ps = prompts(6, seed=3)
    # a stop id that the reference generates early, so "stop" happens
    ref = [reference(model, p, 20) for p in ps]
    stop = ref[0][3]
    params = SamplingParams(max_tokens=20, temperature=0, stop_token_ids=[stop])
    result = run_all(engine, {f"r{i}": (p, params) for i, p in enumerate(ps)})
    for i, r in enumerate(ref):
        cut = next((j + 1 for j, t in enumerate(r) if t in (stop, EOS)), len(r))
        assert result["tokens"][f"r{i}"] == r[:cut]
        last = result["outputs"][f"r{i}"][-1]
        assert last.finished and last.finish_reason == ("stop" if cut < len(r) or r[-1] in (stop, EOS) else "length")
    assert result["outputs"]["r0"][-1].finish_reason == "stop"


def test_prefix_reuse_matches_and_counts(model):
    engine = LLMEngine(model, eos_token_ids=[EOS], block_size=8)
    shared = prompts(1, seed=5, low=40, high=41)[0]
    first, second = shared + [5, 6, 7], shared + [9, 10]
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    run_all(engine, {"a": (first, params)})
    before = engine.stats().cached_tokens_total
    out = run_all(engine, {"b": (second, params)})
    reused = engine.stats().cached_tokens_total - before
    assert reused == (len(shared) // 8) * 8  # every full block of the shared prefix
    assert out["outputs"]["b"][0].num_cached_tokens == reused
    assert out["tokens"]["b"] == reference(model, second, 8)
    # the same prompt again: all but its last token come from the cache, and the answer is the same
    again = run_all(engine, {"c": (first, params)})
    assert again["tokens"]["c"] == reference(model, first, 8)


def test_preemption_when_the_pool_runs_dry(model):
    # room for about two requests' worth of blocks: the others wait, get preempted and recomputed
    engine = LLMEngine(model, eos_token_ids=[EOS], block_size=4, num_blocks=40, max_model_len=128,
                       enable_prefix_caching=False)  # fmt: skip
    ps = prompts(4, seed=7, low=30, high=50)
    params = SamplingParams(max_tokens=30, temperature=0, ignore_eos=True)
    got = run_all(engine, {f"r{i}": (p, params) for i, p in enumerate(ps)})["tokens"]
    for i, p in enumerate(ps):
        assert got[f"r{i}"] == reference(model, p, 30)
    assert engine.stats().num_preemptions_total > 0
    assert engine.allocator.num_free == 40


def test_logprobs_are_the_models_own(model):
    engine = LLMEngine(model, eos_token_ids=[EOS], max_num_batched_tokens=16)  # the prompt in chunks
    prompt = prompts(1, seed=11, low=40, high=41)[0]
    params = SamplingParams(max_tokens=3, temperature=0, ignore_eos=True, logprobs=5, prompt_logprobs=True)
    outs = run_all(engine, {"a": (prompt, params)})["outputs"]["a"]
    generated = [t for o in outs for t in o.token_ids]
    full = torch.tensor([prompt + generated])
    with torch.no_grad():
        logp = torch.log_softmax(model(full).float()[0], dim=-1)  # (T, vocab)
    expected_prompt = [None] + [float(logp[i, prompt[i + 1]]) for i in range(len(prompt) - 1)]
    got_prompt = outs[0].prompt_logprobs
    assert got_prompt[0] is None and len(got_prompt) == len(prompt)
    assert max(abs(a - b) for a, b in zip(got_prompt[1:], expected_prompt[1:])) < 1e-4
    for j, o in enumerate(outs):
        pos = len(prompt) - 1 + j
        (lp,) = o.logprobs
        assert abs(lp.logprob - float(logp[pos, lp.token_id])) < 1e-4
        top_ids = torch.topk(logp[pos], 5).indices.tolist()
        assert [t for t, _ in lp.top] == top_ids
        assert lp.token_id == top_ids[0]  # greedy


def test_sampling_seeded_and_reproducible(model):
    engine = LLMEngine(model, eos_token_ids=[EOS])
    p = prompts(1, seed=2)[0]
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, top_k=20, seed=123, ignore_eos=True)
    a = run_all(engine, {"a": (p, params)})["tokens"]["a"]
    b = run_all(engine, {"b": (p, params), "c": (prompts(1, seed=4)[0], SamplingParams(max_tokens=5))})["tokens"]["b"]
    assert a == b


def test_abort_frees_blocks_at_once(model):
    engine = LLMEngine(model, eos_token_ids=[EOS], enable_prefix_caching=False)
    engine.add_request("a", prompts(1)[0], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    engine.add_request("b", prompts(1, seed=1)[0], SamplingParams(max_tokens=50, temperature=0, ignore_eos=True))
    engine.step()
    engine.step()
    assert engine.allocator.num_free < engine.num_blocks
    engine.abort_request("a")
    (out,) = [o for o in engine.step() if o.request_id == "a"]
    assert out.finished and out.finish_reason == "abort"
    engine.abort_request("b")
    engine.step()
    assert engine.allocator.num_free == engine.num_blocks and not engine.has_unfinished_requests()


@pytest.mark.parametrize(
    "prompt_len,params,field",
    [
        (0, SamplingParams(), "prompt"),
        (128, SamplingParams(), "prompt"),
        (10, SamplingParams(max_tokens=0), "max_tokens"),
        (10, SamplingParams(max_tokens=119), "max_tokens"),
        (10, SamplingParams(temperature=-0.1), "temperature"),
        (10, SamplingParams(top_p=1.5), "top_p"),
        (10, SamplingParams(logprobs=30), "logprobs"),
    ],
)
def test_bad_requests_name_their_field(model, prompt_len, params, field):
    engine = LLMEngine(model, eos_token_ids=[EOS])
    with pytest.raises(EngineError) as info:
        engine.add_request("x", [3] * prompt_len, params)
    assert info.value.field == field
    assert not engine.has_unfinished_requests()


def test_async_engine_concurrent_and_cancelled(model):
    async_engine = AsyncLLMEngine(LLMEngine(model, eos_token_ids=[EOS]))
    ps = prompts(8, seed=9)
    params = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)

    async def collect(p):
        return [t async for out in async_engine.generate(p, params) for t in out.token_ids]

    async def cancelled(p):
        async for _ in async_engine.generate(p, SamplingParams(max_tokens=60, temperature=0, ignore_eos=True)):
            break  # the client goes away after its first token

    async def main():
        results = await asyncio.gather(*(collect(p) for p in ps), *(cancelled(p) for p in ps[:3]))
        return results[: len(ps)]

    try:
        got = asyncio.run(main())
        for p, tokens in zip(ps, got):
            assert tokens == reference(model, p, 10)
        for _ in range(100):  # the aborts reach the engine thread between steps
            stats = async_engine.stats()
            if stats.num_running == 0 and stats.num_free_blocks == stats.num_blocks:
                break
            asyncio.run(asyncio.sleep(0.02))
        assert stats.num_running == 0 and stats.num_waiting == 0
        assert stats.requests_finished_total["abort"] == 3
    finally:
        async_engine.shutdown()


def test_block_allocator_prefix_cache_evicts_least_recent():
    alloc = BlockAllocator(num_blocks=3, block_size=2)
    keys = block_hashes([1, 2, 3, 4, 5], 2)
    assert len(keys) == 2 and keys != block_hashes([1, 2, 3, 5, 5], 2)[:2]
    a, b = alloc.allocate(), alloc.allocate()
    alloc.register(a, keys[0])
    alloc.register(b, keys[1])
    alloc.release([a, b])
    assert alloc.num_free == 3
    assert alloc.lookup(keys) == [a, b]
    alloc.release([a, b])
    c = alloc.allocate()  # the never-cached block first
    d = alloc.allocate()  # then the least recently freed cached one: b (released last-first, a last)
    assert {c, d} == {2, b} and alloc.lookup(keys) == [a]


@pytest.mark.parametrize("variant", ["lora", "int8", "int4", "prepacked"])
def test_adapted_quantized_and_prepacked_models_serve_as_they_generate(variant):
    """LoRA served unmerged, quantized layers and oneDNN-prepacked weights: the engine runs the model as
    `generate` does."""
    from torchformers.generation import prepare_for_cpu_inference, quantization_settings, quantize_model
    from torchformers.pet import get_pet_model

    model = tiny_model(seed=1)
    if variant == "lora":
        get_pet_model(model, {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "target_modules": ".*wq|.*w2"})
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_b" in name:
                    p.normal_(std=0.2)  # a trained adapter (B starts at zero)
    elif variant in ("int8", "int4"):
        extra = {"group_size": 32} if variant == "int4" else {}
        quantize_model(model, quantization_settings({"quant_method": variant, **extra}))
    else:
        prepare_for_cpu_inference(model)
    model.eval()
    engine = LLMEngine(model, eos_token_ids=[EOS], block_size=8, max_num_batched_tokens=32)
    ps = prompts(4, seed=13)
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
    got = run_all(engine, {f"r{i}": (p, params) for i, p in enumerate(ps)})["tokens"]
    for i, p in enumerate(ps):
        assert got[f"r{i}"] == reference(model, p, 8), f"request {i}"
