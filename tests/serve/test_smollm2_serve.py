"""The embedded SmolLM2-135M-Instruct served for real: the server's greedy answers equal `run_mode: predict`'s,
prompt log-probabilities equal the model's own, concurrent streams equal lone ones, a shared prefix is reused
(faster first token, counted in /metrics), and a long soak leaves the server as it found it."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from tests.serve.conftest import (
    http,
    metric,
    predict_network,
    rss_bytes,
    soak,
    start_server,
    write_yaml,
)
from torchformers.cli import config_from_args, run

openai = pytest.importorskip("openai")

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def smol(smollm2_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("smol_serve")
    path = write_yaml(folder, smollm2_dir, tiny=False)
    running, engine, tokenizer, settings, config = start_server(path)
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=300)
    yield running, client, settings, tokenizer, path
    running.stop()
    running.async_engine.shutdown()


def test_greedy_chat_equals_run_mode_predict(smol, tmp_path):
    running, client, settings, tok, path = smol
    results = run(
        config_from_args(
            [
                "--config",
                str(path),
                "--run_mode",
                "predict",
                "--predict_data",
                QUESTION,
                "--output_dir",
                str(tmp_path),
                "--save_file",
                str(tmp_path / "result.txt"),
            ]
        )
    )
    predicted = results[0]["text_generation_text"][0]  # prompt and answer, decoded together
    messages = [{"role": "user", "content": QUESTION}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_text = tok.decode(tok(prompt, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
    r = client.chat.completions.create(model=settings.served_model_name, messages=messages)
    answer = r.choices[0].message.content
    assert "Paris" in answer
    assert prompt_text + answer == predicted
    chunks = client.chat.completions.create(model=settings.served_model_name, messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer


def test_echo_logprobs_equal_the_models_log_softmax(smol):
    running, client, settings, tok, path = smol
    model, _ = predict_network(path)
    prompt = "The Eiffel Tower is in Paris, the capital of France. It was built in"
    r = client.completions.create(model=settings.served_model_name, prompt=prompt, max_tokens=1, echo=True, logprobs=1)
    ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
    got = r.choices[0].logprobs.token_logprobs
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).float()[0], -1)
    want = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert got[0] is None and len(got) == len(ids) + 1
    assert max(abs(a - b) for a, b in zip(got[1 : len(ids)], want)) <= 1e-4
    assert abs(got[-1] - logp[-1].max().item()) <= 1e-4  # the greedy next token


@pytest.mark.slow
def test_sixteen_concurrent_streams_equal_each_alone(smol):
    """About two and a half minutes on two CPU cores (tests/serve/test_server.py runs six in the default run)."""
    running, client, settings, tok, path = smol
    topics = [
        "the sea",
        "mountains",
        "a cat",
        "bread",
        "rain",
        "the moon",
        "trains",
        "music",
        "winter",
        "a garden",
        "chess",
        "coffee",
        "rivers",
        "birds",
        "a library",
        "the desert",
    ]
    prompts = [[{"role": "user", "content": f"Write one sentence about {t}."}] for t in topics]
    kw = dict(model=settings.served_model_name, max_tokens=24)
    alone = [client.chat.completions.create(messages=m, **kw).choices[0].message.content for m in prompts]
    together: dict[int, str] = {}

    def worker(i):
        s = client.chat.completions.create(messages=prompts[i], stream=True, **kw)
        together[i] = "".join(c.choices[0].delta.content or "" for c in s if c.choices)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert [together.get(i) for i in range(16)] == alone


def test_a_disconnected_stream_leaves_no_running_sequence(smol):
    running, client, settings, tok, path = smol
    stream = client.chat.completions.create(
        model=settings.served_model_name,
        max_tokens=200,
        stream=True,
        messages=[{"role": "user", "content": "Tell me a long story."}],
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert metric(http(running.url + "/metrics")[2], "torchformers_num_requests_running") == 1
    stream.close()
    deadline = time.time() + 10
    while metric(http(running.url + "/metrics")[2], "torchformers_num_requests_running") and time.time() < deadline:
        time.sleep(0.05)
    text = http(running.url + "/metrics")[2]
    assert metric(text, "torchformers_num_requests_running") == 0
    assert metric(text, "torchformers_kv_cache_free_blocks") == metric(text, "torchformers_kv_cache_blocks")


def _ttft(client, name, messages) -> float:
    start = time.perf_counter()
    stream = client.chat.completions.create(model=name, messages=messages, max_tokens=2, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content is not None:
            elapsed = time.perf_counter() - start
            stream.close()
            return elapsed
    raise AssertionError("no token")


def test_a_shared_prefix_is_reused(smol):
    running, client, settings, tok, path = smol
    system = "You answer questions about this report. " + " ".join(
        f"Section {i}: the committee reviewed item {i * 7} and found it in order." for i in range(24)
    )
    shared = [{"role": "system", "content": system}]
    n_shared = len(tok(tok.apply_chat_template(shared, tokenize=False), add_special_tokens=False)["input_ids"])
    assert n_shared >= 300
    reused = lambda: metric(http(running.url + "/metrics")[2], "torchformers_prefix_cache_reused_tokens_total")  # noqa: E731
    before = reused()
    first = _ttft(client, settings.served_model_name, shared + [{"role": "user", "content": "What was item 7?"}])
    after_first = reused()
    second = _ttft(client, settings.served_model_name, shared + [{"role": "user", "content": "And item 14?"}])
    gained = reused() - after_first
    assert after_first == before  # the first prompt had nothing to reuse
    assert gained >= n_shared - settings.block_size  # whole blocks of the shared prefix
    assert second <= first / 3, (first, second)


def test_bad_request_errors_name_the_field(smol):
    running, client, settings, tok, path = smol
    status, _, body = http(
        running.url + "/v1/completions",
        "POST",
        json.dumps({"model": settings.served_model_name, "prompt": "hi " * 5000}),
    )
    assert status == 400 and json.loads(body)["error"]["param"] == "prompt"


@pytest.mark.slow
def test_soak_200_requests_from_16_clients(smol):
    running, client, settings, tok, path = smol
    soak(running.url, settings.served_model_name, 20, 16, seed=10)
    before = rss_bytes()
    outcomes = soak(running.url, settings.served_model_name, 180, 16, seed=11)
    assert len(outcomes) == 180 and {k for k, _ in outcomes} >= {"stream", "cancel", "bad", "plain", "completion"}
    deadline = time.time() + 30
    while time.time() < deadline:
        text = http(running.url + "/metrics")[2]
        if metric(text, "torchformers_num_requests_running") == 0:
            break
        time.sleep(0.1)
    assert metric(text, "torchformers_kv_cache_free_blocks") == metric(text, "torchformers_kv_cache_blocks")
    assert http(running.url + "/health")[0] == 200
    after = rss_bytes()
    assert after <= before * 1.10, (before, after)
