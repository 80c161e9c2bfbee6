"""`generate` semantics (eos, lengths, sampling), logits processors against transformers', streamers,
the text_generation pipeline and the CPU prepacking optimisation."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
import torch

from torchformers.generation import (
    RepetitionPenaltyLogitsProcessor,
    TextIteratorStreamer,
    TextStreamer,
    TopKLogitsWarper,
    TopPLogitsWarper,
    prepare_for_cpu_inference,
)
from torchformers.generation.cpu_inference import PackedLinear, can_prepack
from torchformers.generation.text_generator import generation_state
from torchformers.models import LlamaConfig, LlamaForCausalLM
from torchformers.models.llama.llama import LLamaAttention
from torchformers.pipeline import pipeline

VOCAB = 128


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=48, num_layers=2, num_heads=4, n_kv_heads=2, intermediate_size=96,
                      seq_length=128, compute_dtype="float32", param_init_type="float32", init_method_std=0.3,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


class CharTokenizer:
    """A stand-in tokenizer: one id per ASCII character; 0 pad, 1 bos, 2 eos are special."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([1] if add_special_tokens else []) + [min(ord(c), VOCAB - 1) for c in text]

    def __call__(self, text, add_special_tokens: bool = True, **kwargs):
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": [self.encode(t, add_special_tokens) for t in text]}

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return "".join(
            chr(i) if i > 2 or not skip_special_tokens else "" for i in ids if not (skip_special_tokens and i < 3)
        )

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + (
            "<assistant>" if add_generation_prompt else ""
        )


def greedy(model, prompt, n, **kw):
    return model.generate([prompt], max_new_tokens=n, do_sample=False, eos_token_id=[], **kw)[0].tolist()


def test_returns_prompt_plus_completion_as_int32_arrays():
    model = tiny_model()
    out = model.generate([[5, 6, 7], [8, 9]], max_new_tokens=4, do_sample=False, eos_token_id=[])
    assert all(isinstance(o, np.ndarray) and o.dtype == np.int32 for o in out)
    assert out[0][:3].tolist() == [5, 6, 7] and len(out[0]) == 7 and out[1][:2].tolist() == [8, 9]
    # a single prompt as a flat list; a right-padded 2-D array (pad 0) gives the same rows
    assert model.generate([5, 6, 7], max_new_tokens=4, do_sample=False, eos_token_id=[])[0].tolist() == out[0].tolist()
    padded = np.array([[5, 6, 7], [8, 9, 0]])
    again = model.generate(padded, max_new_tokens=4, do_sample=False, eos_token_id=[])
    assert [a.tolist() for a in again] == [o.tolist() for o in out]


def test_stops_on_any_of_several_eos_ids():
    model = tiny_model()
    free = greedy(model, [5, 6, 7], 12)[3:]
    first, second = free[3], free[6]
    # a row stops at the first eos it produces, which is kept in the output
    out = model.generate([[5, 6, 7]], max_new_tokens=12, do_sample=False, eos_token_id=[second, first])[0].tolist()
    stop = min(free.index(first), free.index(second))
    assert out == [5, 6, 7] + free[: stop + 1]
    # with min_new_tokens the eos ids are forbidden until then
    out = model.generate([[5, 6, 7]], max_new_tokens=12, min_new_tokens=12, do_sample=False, eos_token_id=free[0])[0]
    assert len(out) == 15 and free[0] not in out[3:].tolist()


def test_length_limits():
    model = tiny_model()
    assert len(model.generate([[5, 6, 7]], max_length=10, do_sample=False, eos_token_id=[])[0]) == 10
    # max_length is per row: the longer prompt gets fewer new tokens
    out = model.generate([[5, 6, 7], [5, 6, 7, 8, 9, 10]], max_length=10, do_sample=False, eos_token_id=[])
    assert [len(o) for o in out] == [10, 10]
    with pytest.raises(ValueError, match="max_length"):
        model.generate([list(range(3, 20))], max_length=10)
    with pytest.raises(TypeError, match="unknown arguments"):
        model.generate([[5]], max_new_token=3)


@pytest.mark.parametrize("use_past", [True, False])
def test_prompts_of_different_lengths_up_to_the_models_positions(use_past):
    # max_length = seq_length: the longer row reaches its limit while the shorter one still decodes
    model = tiny_model()
    prompts = [[5, 6], [5, 6, 7, 8, 9, 10, 11, 12]]
    kw = {"max_length": 128, "do_sample": False, "eos_token_id": [], "use_past": use_past}
    out = model.generate(prompts, **kw)
    assert [o.tolist() for o in out] == [model.generate([p], **kw)[0].tolist() for p in prompts]


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = tiny_model()
    kw = dict(max_new_tokens=16, do_sample=True, eos_token_id=[], top_k=0, temperature=1.5)
    a = model.generate([[5, 6, 7]], seed=3, **kw)[0].tolist()
    b = model.generate([[5, 6, 7]], seed=3, **kw)[0].tolist()
    c = model.generate([[5, 6, 7]], seed=4, **kw)[0].tolist()
    assert a == b and a != c
    top1 = model.generate([[5, 6, 7]], max_new_tokens=16, do_sample=True, top_k=1, seed=5, eos_token_id=[])[0]
    assert top1.tolist() == greedy(model, [5, 6, 7], 16)
    # the model config's generation defaults (LlamaConfig: do_sample=True, top_k=5) are in effect
    assert model.generation_config.do_sample is True and model.generation_config.top_k == 5


def test_processors_match_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.generation import logits_process as hf

    torch.manual_seed(0)
    scores = torch.randn(3, 50)
    ids = torch.randint(0, 50, (3, 7))
    torch.testing.assert_close(
        RepetitionPenaltyLogitsProcessor(1.3)(ids, scores), hf.RepetitionPenaltyLogitsProcessor(1.3)(ids, scores)
    )
    torch.testing.assert_close(TopKLogitsWarper(5)(ids, scores), hf.TopKLogitsWarper(5)(ids, scores))
    torch.testing.assert_close(TopPLogitsWarper(0.7)(ids, scores), hf.TopPLogitsWarper(0.7)(ids, scores))
    assert transformers is not None


def test_repetition_penalty_changes_output_and_ignores_padding():
    model = tiny_model()
    plain = greedy(model, [5, 6, 7], 20)
    penalised = greedy(model, [5, 6, 7], 20, repetition_penalty=5.0)
    assert plain != penalised
    # a strong penalty makes a repeat of any seen token unlikely
    gen = penalised[3:]
    assert len(set(gen)) > len(set(plain[3:]))


def test_text_streamer_prints_the_completion(capsys):
    model = tiny_model()
    tok = CharTokenizer()
    prompt = tok.encode("hi there")
    out = model.generate([prompt], max_new_tokens=10, do_sample=False, eos_token_id=[],
                         streamer=TextStreamer(tok, skip_prompt=True))  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.rstrip("\n") == tok.decode(out[0][len(prompt) :].tolist(), skip_special_tokens=True)


def test_text_iterator_streamer():
    model = tiny_model()
    tok = CharTokenizer()
    prompt = tok.encode("abc")
    streamer = TextIteratorStreamer(tok, timeout=30)
    result = {}

    def run():
        result["out"] = model.generate([prompt], max_new_tokens=8, do_sample=False, eos_token_id=[], streamer=streamer)

    thread = threading.Thread(target=run)
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == tok.decode(result["out"][0].tolist(), skip_special_tokens=True)
    with pytest.raises(ValueError, match="single prompt"):
        model.generate([[5], [6]], streamer=TextStreamer(tok))


def test_text_generation_pipeline():
    model = tiny_model()
    tok = CharTokenizer()
    pipe = pipeline("text_generation", model=model, tokenizer=tok, max_new_tokens=6, do_sample=False)
    result = pipe(["I love Beijing, because", "hello"], eos_token_id=[])
    assert len(result) == 2 and set(result[0]) == {"text_generation_text"}
    expected = model.generate([tok.encode("hello")], max_new_tokens=6, do_sample=False, eos_token_id=[])[0]
    assert result[1]["text_generation_text"] == [tok.decode(expected.tolist(), skip_special_tokens=True)]
    assert result[0]["text_generation_text"][0].startswith("I love Beijing, because")
    chat = pipe([{"role": "user", "content": "hi"}], eos_token_id=[])
    assert chat[0]["text_generation_text"][0].startswith("<user>hi<assistant>")


@pytest.mark.skipif(not can_prepack(torch.nn.Linear(2, 2)), reason="oneDNN prepacking unavailable")
def test_prepare_for_cpu_inference_keeps_tokens():
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 12))
    with torch.no_grad():
        before = model(ids)
    tokens = model.generate([[5, 6, 7], [9, 10]], max_new_tokens=24, do_sample=False, eos_token_id=[])
    prepare_for_cpu_inference(model)
    assert isinstance(model.lm_head, PackedLinear) and isinstance(model.model.layers[0].attention.wqkv, PackedLinear)
    assert isinstance(model.model.layers[0].feed_forward.w13, PackedLinear) and not hasattr(
        model.model.layers[0].attention, "wq"
    )
    with torch.no_grad():
        assert (model(ids) - before).abs().max().item() <= 1e-4
    packed = model.generate([[5, 6, 7], [9, 10]], max_new_tokens=24, do_sample=False, eos_token_id=[])
    assert [t.tolist() for t in packed] == [t.tolist() for t in tokens]


def test_prepare_for_cpu_inference_leaves_other_models_alone():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seq_length=16,
                      compute_dtype="bfloat16", param_init_type="bfloat16")  # fmt: skip
    model = LlamaForCausalLM(cfg)
    assert prepare_for_cpu_inference(model) is model and type(model.lm_head) is torch.nn.Linear


@pytest.mark.slow
def test_compiled_decode_gives_the_same_tokens():
    model = tiny_model()
    eager = greedy(model, [5, 6, 7], 12)
    assert greedy(model, [5, 6, 7], 12, compile_decode=True) == eager


def test_generation_state_lives_outside_the_model():
    model = tiny_model()
    greedy(model, [5, 6, 7], 4)
    assert not any(key.startswith("_kv") or key.startswith("_compiled") for key in vars(model))
    assert not any("cache" in name for name, _ in model.named_modules())
    model.setup_kv_cache(2, 16)
    state = generation_state(model)
    assert len(state.kv_caches) == 2 and state.kv_cache_shape == (2, 16)
    assert model.kvcache(1)[0].shape == (2, 2, 16, 12)  # (batch, kv heads, slots, head_dim)
    assert "key_cache" not in " ".join(model.state_dict())
    model.clear_kv_cache()
    assert state.kv_caches is None and state.kv_cache_shape is None
    with pytest.raises(RuntimeError, match="setup_kv_cache"):
        model.kvcache(0)
    # the state goes with its model
    model.setup_kv_cache(1, 8)
    ref = weakref.ref(model)
    del model, state
    gc.collect()
    assert ref() is None


@pytest.mark.skipif(not can_prepack(torch.nn.Linear(2, 2)), reason="oneDNN prepacking unavailable")
def test_prepare_for_cpu_inference_swaps_whole_modules():
    model = tiny_model()
    ids = torch.randint(3, VOCAB, (2, 12))
    with torch.no_grad():
        before = model(ids)
    wrapped = model.model.layers[1].attention
    wrapped.wq = torch.nn.Sequential(wrapped.wq)  # not a plain Linear (as under LoRA): no fused class
    prepare_for_cpu_inference(model)
    attention, feed_forward = model.model.layers[0].attention, model.model.layers[0].feed_forward
    # generated subclasses, made once per class; the packed matrix keeps the parts' widths
    assert type(attention).__name__ == "PackedLLamaAttention" and isinstance(attention, LLamaAttention)
    assert type(feed_forward).__name__ == "PackedLlamaFeedForward"
    assert type(model.model.layers[1].feed_forward) is type(feed_forward)
    assert attention.wqkv.split_sizes == (48, 24, 24) and feed_forward.w13.split_sizes == (96, 96)
    assert type(wrapped) is LLamaAttention and isinstance(wrapped.wq[0], PackedLinear)
    with torch.no_grad():
        assert (model(ids) - before).abs().max().item() <= 1e-4
    assert prepare_for_cpu_inference(model) is model and type(attention).__name__ == "PackedLLamaAttention"
