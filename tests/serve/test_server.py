"""The OpenAI API of `run_mode: serve` through the real `openai` client, on a small random Llama (saved to a
checkpoint) with SmolLM2's tokenizer and chat template: results are checked against the model itself
(`generate`, log-softmax), not against recorded outputs."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch

from tests.serve.conftest import (
    chat_prompt_ids,
    greedy_ids,
    http,
    metric,
    predict_network,
    rss_bytes,
    soak,
    start_server,
)

openai = pytest.importorskip("openai")

NO_EOS = {"ignore_eos": True}  # vLLM's extra: generate max_tokens tokens
MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="module")
def served(tiny_yaml):
    running, engine, tokenizer, settings, config = start_server(tiny_yaml)
    model, _ = predict_network(tiny_yaml)
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    yield running, client, settings, model, tokenizer
    running.stop()
    running.async_engine.shutdown()


def _eos(tokenizer) -> int:
    return tokenizer.eos_token_id


def test_chat_greedy_equals_generate_streamed_and_not(served):
    running, client, settings, model, tok = served
    ref_ids = greedy_ids(model, chat_prompt_ids(tok, MESSAGES), 12, _eos(tok))
    ref = tok.decode(ref_ids, skip_special_tokens=True)
    r = client.chat.completions.create(model=settings.served_model_name, messages=MESSAGES, max_tokens=12)
    assert r.choices[0].message.content == ref
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("stop" if ref_ids[-1] == _eos(tok) else "length")
    assert r.usage.prompt_tokens == len(chat_prompt_ids(tok, MESSAGES))
    assert r.usage.completion_tokens == len(ref_ids)
    stream = client.chat.completions.create(
        model=settings.served_model_name,
        messages=MESSAGES,
        max_completion_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref_ids)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_default_max_tokens_come_from_the_yaml(served):
    running, client, settings, model, tok = served
    r = client.chat.completions.create(model=settings.served_model_name, messages=MESSAGES, extra_body=NO_EOS)
    assert r.usage.completion_tokens == settings.default_max_tokens == 64  # model_config.max_new_tokens


def test_chat_logprobs_are_the_models_log_softmax(served):
    running, client, settings, model, tok = served
    prompt = chat_prompt_ids(tok, MESSAGES)
    r = client.chat.completions.create(
        model=settings.served_model_name, messages=MESSAGES, max_tokens=4, logprobs=True, top_logprobs=3
    )
    entries = r.choices[0].logprobs.content
    ids = greedy_ids(model, prompt, 4, _eos(tok))
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ids])).float()
    logp = torch.log_softmax(logits[0], -1)
    for k, entry in enumerate(entries):
        row = logp[len(prompt) - 1 + k]
        assert abs(entry.logprob - row[ids[k]].item()) <= 1e-4
        top = row.topk(3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(top.values.tolist(), abs=1e-4)
        assert len(entry.top_logprobs) == 3


def test_seeded_sampling_repeats_and_n_gives_n_choices(served):
    running, client, settings, model, tok = served
    kw = dict(model=settings.served_model_name, messages=MESSAGES, max_tokens=10, temperature=1.0, seed=7)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b
    r = client.chat.completions.create(**{**kw, "n": 3})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.choices[0].message.content == a  # choice j samples with seed + j
    assert len({c.message.content for c in r.choices}) > 1
    assert r.usage.prompt_tokens == len(chat_prompt_ids(tok, MESSAGES))


def test_stop_strings_cut_the_text_streamed_and_not(served):
    running, client, settings, model, tok = served
    kw = dict(
        model=settings.served_model_name, messages=MESSAGES, max_tokens=24, temperature=1.0, seed=3, extra_body=NO_EOS
    )
    full = client.chat.completions.create(**kw).choices[0].message.content
    assert len(full) > 12
    stop = full[8:11]
    expected = full[: full.find(stop)]
    r = client.chat.completions.create(**kw, stop=[stop, "\u2603never"])
    assert r.choices[0].message.content == expected
    assert r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(**kw, stop=stop, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions_prompt_forms_and_echo_logprobs(served):
    running, client, settings, model, tok = served
    prompt = "The sea is wide and"
    ids = list(tok(prompt, add_special_tokens=True)["input_ids"])
    r = client.completions.create(
        model=settings.served_model_name, prompt=prompt, max_tokens=5, echo=True, logprobs=2, extra_body=NO_EOS
    )
    choice = r.choices[0]
    gen = greedy_ids(model, ids, 5, [])
    assert choice.text == prompt + tok.decode(gen, skip_special_tokens=True)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids + gen])).float()[0], -1)
    want = [None] + [logp[i - 1, t].item() for i, t in enumerate(ids + gen) if i > 0]
    got = choice.logprobs.token_logprobs
    assert len(got) == len(ids) + 5 and got[0] is None
    assert max(abs(a - b) for a, b in zip(got[1:], want[1:])) <= 1e-4
    assert choice.logprobs.tokens[: len(ids)] == [tok.decode([t]) for t in ids]
    offsets = choice.logprobs.text_offset
    assert offsets == sorted(offsets) and offsets[0] == 0
    # token ids, a batch of strings, and a batch of token-id lists
    r2 = client.completions.create(model=settings.served_model_name, prompt=ids, max_tokens=5, extra_body=NO_EOS)
    assert r2.choices[0].text == tok.decode(gen, skip_special_tokens=True)
    r3 = client.completions.create(model=settings.served_model_name, prompt=[prompt, "Hello"], max_tokens=3, n=2)
    assert [c.index for c in r3.choices] == [0, 1, 2, 3]
    assert r3.choices[0].text == r3.choices[1].text  # greedy: the n choices agree
    r4 = client.completions.create(
        model=settings.served_model_name, prompt=[ids, ids[:3]], max_tokens=5, extra_body=NO_EOS
    )
    assert r4.choices[0].text == r2.choices[0].text


def test_completions_stream_with_echo(served):
    running, client, settings, model, tok = served
    prompt = "Once upon a time"
    full = client.completions.create(model=settings.served_model_name, prompt=prompt, max_tokens=6, echo=True)
    chunks = list(
        client.completions.create(model=settings.served_model_name, prompt=prompt, max_tokens=6, echo=True, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text


def test_models_health_metrics_and_unknown_route(served):
    running, client, settings, model, tok = served
    assert [m.id for m in client.models.list().data] == [settings.served_model_name]
    assert http(running.url + "/health")[0] == 200
    status, headers, body = http(running.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    for name in (
        "torchformers_time_to_first_token_seconds_count",
        "torchformers_inter_token_latency_seconds_count",
        "torchformers_prompt_tokens_total",
        "torchformers_generation_tokens_total",
        "torchformers_prefix_cache_reused_tokens_total",
        "torchformers_num_requests_waiting",
        "torchformers_num_requests_running",
        "torchformers_kv_cache_free_blocks",
    ):
        metric(body, name)
    assert metric(body, "torchformers_time_to_first_token_seconds_count") > 0
    assert metric(body, "torchformers_http_requests_total", 'endpoint="/v1/chat/completions",status="200"') > 0
    status, _, body = http(running.url + "/v2/nothing")
    assert status == 404 and json.loads(body)["error"]["message"]


def test_api_key_guards_every_route_but_health(served):
    running, client, settings, model, tok = served
    settings.api_key = "s3cret"
    try:
        assert http(running.url + "/health")[0] == 200
        for path in ("/v1/models", "/metrics"):
            status, _, body = http(running.url + path)
            assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        good = openai.OpenAI(base_url=running.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model=settings.served_model_name, messages=MESSAGES, max_tokens=2)
        assert http(running.url + "/metrics", headers={"Authorization": "Bearer s3cret"})[0] == 200
    finally:
        settings.api_key = None


def test_a_full_queue_answers_429_with_retry_after(served):
    running, client, settings, model, tok = served
    settings.max_queue = 0
    try:
        status, headers, body = http(
            running.url + "/v1/chat/completions",
            "POST",
            json.dumps({"model": settings.served_model_name, "messages": MESSAGES}),
        )
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert json.loads(body)["error"]["code"] == "queue_full"
    finally:
        settings.max_queue = 256


def _bad_requests(name: str, context: int) -> list[tuple[str, str, int, str | None]]:
    """(path, body, status, param named) for each kind of bad request."""
    msg = [{"role": "user", "content": "hi"}]
    long_prompt = "word " * (context + 10)

    def chat(**kw):
        return json.dumps({"model": name, "messages": msg, **kw})

    return [
        ("/v1/chat/completions", '{"model": "x", "messages": [', 400, "body"),  # malformed JSON
        ("/v1/chat/completions", "[1, 2]", 400, "body"),
        ("/v1/chat/completions", json.dumps({"model": "nope", "messages": msg}), 404, "model"),
        ("/v1/chat/completions", json.dumps({"model": name, "messages": [{"content": "hi"}]}), 400, "messages[0].role"),
        ("/v1/chat/completions", json.dumps({"model": name}), 400, "messages"),
        ("/v1/chat/completions", chat(max_tokens=-1), 400, "max_tokens"),
        ("/v1/chat/completions", chat(max_tokens=context + 1), 400, "max_tokens"),
        ("/v1/chat/completions", chat(max_completion_tokens=context * 4), 400, "max_completion_tokens"),
        (
            "/v1/chat/completions",
            json.dumps({"model": name, "messages": [{"role": "user", "content": long_prompt}]}),
            400,
            "messages",
        ),
        ("/v1/completions", json.dumps({"model": name, "prompt": long_prompt}), 400, "prompt"),
        ("/v1/chat/completions", chat(temperature=-0.5), 400, "temperature"),
        ("/v1/chat/completions", chat(top_p=1.5), 400, "top_p"),
        ("/v1/chat/completions", chat(n=99), 400, "n"),
        ("/v1/chat/completions", chat(temperature="hot"), 400, "temperature"),
        ("/v1/chat/completions", chat(max_tokens="ten"), 400, "max_tokens"),
        ("/v1/chat/completions", chat(stream="yes"), 400, "stream"),
        ("/v1/chat/completions", chat(stop=5), 400, "stop"),
        ("/v1/completions", json.dumps({"model": name, "prompt": "hi", "logprobs": "many"}), 400, "logprobs"),
        ("/v1/completions", json.dumps({"model": name, "prompt": [1, "a"]}), 400, "prompt"),
        ("/v1/completions", json.dumps({"model": name, "prompt": [10**9]}), 400, "prompt"),
    ]


def test_bad_requests_get_openai_errors_while_a_stream_runs(served):
    running, client, settings, model, tok = served
    stream = client.chat.completions.create(
        model=settings.served_model_name, messages=MESSAGES, max_tokens=60, extra_body=NO_EOS, stream=True
    )
    it = iter(stream)
    first = [next(it), next(it)]
    context = running.async_engine.engine.max_model_len
    for path, body, status, param in _bad_requests(settings.served_model_name, context):
        got, _, text = http(running.url + path, "POST", body)
        err = json.loads(text)["error"]
        assert got == status, (body, text)
        assert err["param"] == param, (body, text)
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
    rest = list(it)
    assert rest[-1].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in first + rest if c.choices)
    ref = tok.decode(greedy_ids(model, chat_prompt_ids(tok, MESSAGES), 60, []), skip_special_tokens=True)
    assert text == ref  # the stream was not disturbed


def _running(url: str) -> float:
    return metric(http(url + "/metrics")[2], "torchformers_num_requests_running")


def _open_stream(url: str, body: dict) -> socket.socket:
    """Start a streaming request on a raw socket and read until the first token arrives."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    got = b""
    while got.count(b"data: ") < 3:
        got += sock.recv(4096)
    return sock


def test_a_client_that_disconnects_leaves_no_running_sequence(served):
    running, client, settings, model, tok = served
    body = {
        "model": settings.served_model_name,
        "messages": MESSAGES,
        "max_tokens": 150,
        "ignore_eos": True,
        "stream": True,
    }
    socks = [_open_stream(running.url, body) for _ in range(3)]
    assert _running(running.url) >= 1
    for s in socks:
        s.close()
    deadline = time.time() + 10
    while _running(running.url) and time.time() < deadline:
        time.sleep(0.05)
    assert _running(running.url) == 0
    text = http(running.url + "/metrics")[2]
    assert metric(text, "torchformers_kv_cache_free_blocks") == metric(text, "torchformers_kv_cache_blocks")
    # a non-streamed request whose client goes away is aborted too
    sock = socket.create_connection(("127.0.0.1", running.port), timeout=60)
    data = json.dumps({**body, "stream": False, "max_tokens": 200}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    deadline = time.time() + 10
    while not _running(running.url) and time.time() < deadline:
        time.sleep(0.02)
    sock.close()
    deadline = time.time() + 10
    while _running(running.url) and time.time() < deadline:
        time.sleep(0.05)
    assert _running(running.url) == 0


def test_concurrent_streams_equal_each_alone(served):
    running, client, settings, model, tok = served
    prompts = [[{"role": "user", "content": f"Count to {i} please."}] for i in range(6)]
    alone = [
        client.chat.completions.create(model=settings.served_model_name, messages=m, max_tokens=16, extra_body=NO_EOS)
        .choices[0]
        .message.content
        for m in prompts
    ]
    results: dict[int, str] = {}

    def worker(i):
        s = client.chat.completions.create(
            model=settings.served_model_name, messages=prompts[i], max_tokens=16, extra_body=NO_EOS, stream=True
        )
        results[i] = "".join(c.choices[0].delta.content or "" for c in s if c.choices)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [results[i] for i in range(len(prompts))] == alone


def _wait_idle(url: str) -> str:
    deadline = time.time() + 20
    while True:
        text = http(url + "/metrics")[2]
        idle = (
            metric(text, "torchformers_num_requests_running") == 0
            and metric(text, "torchformers_num_requests_waiting") == 0
        )
        if idle or time.time() > deadline:
            return text
        time.sleep(0.05)


def test_small_soak_leaves_the_server_clean(served):
    """A short version of the soak (tests/serve/test_smollm2_serve.py has the long one)."""
    running, client, settings, model, tok = served
    soak(running.url, settings.served_model_name, 20, 8, seed=1, max_prompt_words=60)
    before = rss_bytes()
    outcomes = soak(running.url, settings.served_model_name, 40, 8, seed=2, max_prompt_words=60)
    assert {k for k, _ in outcomes} >= {"stream", "cancel", "bad"}
    text = _wait_idle(running.url)
    assert metric(text, "torchformers_kv_cache_free_blocks") == metric(text, "torchformers_kv_cache_blocks")
    assert metric(text, "torchformers_server_queue_length") == 0
    assert http(running.url + "/health")[0] == 200
    assert rss_bytes() <= before * 1.10


def test_a_stopped_engine_answers_503_with_retry_after(tiny_yaml):
    running, engine, tokenizer, settings, config = start_server(tiny_yaml)
    try:
        running.async_engine.shutdown()
        body = json.dumps({"model": settings.served_model_name, "messages": MESSAGES, "max_tokens": 2})
        status, headers, text = http(running.url + "/v1/chat/completions", "POST", body)
        assert status == 503 and int(headers["retry-after"]) >= 1
        assert json.loads(text)["error"]["code"] == "engine_unavailable"
        assert http(running.url + "/health")[0] == 503
    finally:
        running.stop()
