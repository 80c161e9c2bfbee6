"""The OpenAI-compatible HTTP server: `build_app(engine, tokenizer, settings) -> FastAPI`.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics.
Requests run on an `AsyncLLMEngine` (continuous batching); `n > 1` submits n sequences with seeds seed,
seed+1, ...; stop strings are applied here on the detokenized text. A client that goes away (a stream it
closes, or a plain request it abandons) has its sequences aborted at once. Errors use OpenAI's body
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from torchformers.generation.engine import EngineError, SamplingParams
from torchformers.serve.detokenize import IncrementalText
from torchformers.serve.metrics import CONTENT_TYPE, ServerMetrics
from torchformers.serve.protocol import (
    AssistantMessage,
    ChatChoiceLogprobs,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatLogprob,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    ModelCard,
    ModelList,
    UsageInfo,
    chunk_json,
    field_of_validation_error,
    message_of_validation_error,
)

__all__ = ["APIError", "ServeSettings", "build_app"]


@dataclass
class ServeSettings:
    """The server's settings (the YAML's `serve:` section) and the generation defaults of the model's YAML."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    served_model_name: str = "model"
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 512
    block_size: int = 16
    num_blocks: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    max_queue: int = 256
    max_n: int = 8
    # generation defaults (model.model_config): max_new_tokens, do_sample and its temperature/top_k/top_p
    default_max_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    adapters: tuple[str, ...] = field(default_factory=tuple)  # S-LoRA adapter names


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    TYPES = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        429: "rate_limit_error",
        503: "service_unavailable_error",
    }

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.retry_after = status, message, param, code, retry_after

    def response(self) -> JSONResponse:
        body = {
            "error": {
                "message": self.message,
                "type": self.TYPES.get(self.status, "server_error"),
                "param": self.param,
                "code": self.code,
            }
        }
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def _stream_error(err: BaseException) -> dict:
    """The event a stream ends with when the engine fails after the answer has begun."""
    return {"error": {"message": f"generation failed: {err}", "type": "server_error", "param": None, "code": None}}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


@dataclass
class _Seq:
    """One choice: its prompt, sampling parameters, request id and the text it has produced."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    text: IncrementalText
    prompt_index: int = 0
    finish_reason: str | None = None
    logprobs: list = field(default_factory=list)  # TokenLogprob of each generated token
    prompt_logprobs: list | None = None
    num_cached_tokens: int = 0
    num_output_tokens: int = 0
    first_at: float | None = None
    last_at: float | None = None
    started: bool = False  # has had its first output (no longer waiting)


class _Server:
    def __init__(self, engine, tokenizer, settings: ServeSettings):
        self.engine = engine
        self.tokenizer = tokenizer
        self.settings = settings
        self.waiting = 0  # admitted sequences without a first output
        self.metrics = ServerMetrics(engine.stats, lambda: self.waiting)
        self.created = int(time.time())

    # ------------------------------------------------------------------ helpers
    @property
    def max_model_len(self) -> int:
        return int(self.engine.engine.max_model_len)

    @property
    def vocab_size(self) -> int:
        try:
            return len(self.tokenizer)
        except TypeError:
            return int(self.tokenizer.vocab_size)

    def adapter_of(self, model: str, adapter_id: str | None) -> str | None:
        served = self.settings.served_model_name
        if model != served:
            head, sep, tail = model.partition(":")
            if not (sep and head == served and tail in self.settings.adapters):
                raise APIError(
                    404,
                    f"The model '{model}' does not exist (served: {', '.join(self.model_ids())})",
                    "model",
                    "model_not_found",
                )
            adapter_id = adapter_id or tail
        if adapter_id is not None and adapter_id not in self.settings.adapters:
            raise APIError(
                404,
                f"adapter_id '{adapter_id}' is not loaded (adapters: {', '.join(self.settings.adapters) or 'none'})",
                "adapter_id",
                "model_not_found",
            )
        return adapter_id

    def model_ids(self) -> list[str]:
        served = self.settings.served_model_name
        return [served] + [f"{served}:{a}" for a in self.settings.adapters]

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)], skip_special_tokens=False)

    def sampling(
        self,
        req,
        max_tokens: int | None,
        max_tokens_field: str,
        prompt_len: int,
        prompt_field: str,
        adapter_id: str | None,
        logprobs: int | None,
        prompt_logprobs: bool,
    ) -> SamplingParams:
        s = self.settings
        if req.presence_penalty or req.frequency_penalty:
            name = "presence_penalty" if req.presence_penalty else "frequency_penalty"
            raise APIError(400, f"{name} is not supported (use repetition_penalty)", name)
        if prompt_len >= self.max_model_len:
            raise APIError(
                400,
                f"{prompt_field}: the prompt has {prompt_len} tokens; the context is "
                f"{self.max_model_len} tokens (prompt + max_tokens must fit)",
                prompt_field,
            )
        room = self.max_model_len - prompt_len
        if max_tokens is None:
            max_tokens = min(s.default_max_tokens or room, room)
        elif max_tokens > room:
            raise APIError(
                400,
                f"{max_tokens_field} is {max_tokens}; the prompt has {prompt_len} tokens and the "
                f"context is {self.max_model_len}, so at most {room}",
                max_tokens_field,
            )
        sampled = req.temperature is not None or s.do_sample
        temperature = req.temperature if req.temperature is not None else (s.temperature if s.do_sample else 0.0)
        top_p = req.top_p if req.top_p is not None else (s.top_p if sampled else 1.0)
        top_k = req.top_k if req.top_k is not None else (s.top_k if sampled else 0)
        rep = req.repetition_penalty if req.repetition_penalty is not None else s.repetition_penalty
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=req.seed,
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            repetition_penalty=rep,
            min_tokens=min(req.min_tokens, max_tokens),
            adapter_id=adapter_id,
        )

    def check_n(self, n: int) -> None:
        if n > self.settings.max_n:
            raise APIError(400, f"n is {n}; this server allows at most {self.settings.max_n} (serve.max_n)", "n")

    def make_seqs(
        self, prompts: list[list[int]], params: list[SamplingParams], n: int, stop: list[str], prefix: str
    ) -> list[_Seq]:
        seqs = []
        for p, (ids, base) in enumerate(zip(prompts, params)):
            for j in range(n):
                sp = replace(base, seed=None if base.seed is None else base.seed + j)
                seqs.append(
                    _Seq(
                        index=p * n + j,
                        prompt_ids=ids,
                        params=sp,
                        request_id=f"{prefix}-{p}-{j}",
                        text=IncrementalText(self.tokenizer, stop),
                        prompt_index=p,
                    )
                )
        return seqs

    # ------------------------------------------------------------------ running sequences
    async def start(self, seqs: list[_Seq], arrival: float, prompt_field: str):
        """Admit the sequences and wait for each one's first output (so a request the engine refuses is a 400
        before any byte of the answer). Returns the generators and the first outputs."""
        if self.waiting + len(seqs) > self.settings.max_queue:
            raise APIError(
                429,
                f"the server's queue is full ({self.settings.max_queue} waiting sequences, "
                "serve.max_queue); retry shortly",
                None,
                "queue_full",
                retry_after=1,
            )
        gens = [self.engine.generate(s.prompt_ids, s.params, request_id=s.request_id) for s in seqs]
        self.waiting += len(seqs)
        try:
            firsts = await asyncio.gather(*(g.__anext__() for g in gens), return_exceptions=True)
        except BaseException:  # cancelled (the client went away)
            await self._close(gens, seqs)
            raise
        errors = [f for f in firsts if isinstance(f, BaseException)]
        if errors:
            await self._close(gens, seqs)
            err = errors[0]
            if isinstance(err, EngineError):
                param = getattr(err, "field", None)
                if param in ("prompt", "messages", "prompt_ids"):
                    param = prompt_field
                raise APIError(400, str(err), param) from None
            if isinstance(err, (StopAsyncIteration, RuntimeError)):  # the engine is shut down or its step failed
                raise APIError(
                    503,
                    f"the engine cannot take requests now ({err or 'it ended the request'})",
                    None,
                    "engine_unavailable",
                    retry_after=1,
                )
            raise err
        return gens, firsts

    async def _close(self, gens, seqs) -> None:
        for g in gens:
            try:
                await g.aclose()
            except Exception:  # noqa: BLE001 - closing must not hide the first error
                pass
        for s in seqs:
            self.engine.abort(s.request_id)
            if not s.started:
                s.started = True
                self.waiting -= 1

    def record(self, seq: _Seq, out, arrival: float) -> None:
        now = time.perf_counter()
        if not seq.started:
            seq.started = True
            self.waiting -= 1
        if seq.first_at is None and out.token_ids:
            seq.first_at = now
            self.metrics.ttft.observe(now - arrival)
        elif seq.last_at is not None and out.token_ids:
            self.metrics.itl.observe(now - seq.last_at)
        if out.token_ids:
            seq.last_at = now
        if out.prompt_logprobs is not None:
            seq.prompt_logprobs = list(out.prompt_logprobs)
        seq.num_cached_tokens = max(seq.num_cached_tokens, out.num_cached_tokens)
        seq.num_output_tokens = out.num_output_tokens
        if out.logprobs:
            seq.logprobs.extend(out.logprobs)
        seq.text.add(out.token_ids, final=out.finished)
        if seq.text.stopped:
            seq.finish_reason = "stop"
        elif out.finished:
            seq.finish_reason = out.finish_reason

    async def run(self, seqs: list[_Seq], gens, firsts, arrival: float) -> AsyncIterator[list[_Seq]]:
        """Feed the outputs into the sequences; yields the sequences that changed, until all are finished."""
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, gen) -> None:
            try:
                async for out in gen:
                    queue.put_nowait((i, out))
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - handed to the consumer
                queue.put_nowait((i, err))

        tasks: dict[int, asyncio.Task] = {}
        try:
            for seq, first in zip(seqs, firsts):
                self.record(seq, first, arrival)
            live = {i for i, s in enumerate(seqs) if s.finish_reason is None}
            for i in live:
                tasks[i] = asyncio.create_task(pump(i, gens[i]))
            for s in seqs:
                if s.text.stopped:
                    self.engine.abort(s.request_id)
            yield list(seqs)
            while live:
                i, out = await queue.get()
                if i not in live:
                    continue
                if isinstance(out, BaseException):
                    raise out
                seq = seqs[i]
                self.record(seq, out, arrival)
                if seq.finish_reason is not None:
                    live.discard(i)
                    if seq.text.stopped and not out.finished:  # a stop string: the engine stops at once
                        tasks[i].cancel()
                        self.engine.abort(seq.request_id)
                yield [seq]
            now = time.perf_counter()
            for _ in seqs:
                self.metrics.e2e.observe(now - arrival)
        finally:
            for t in tasks.values():
                t.cancel()
            for t in tasks.values():
                try:
                    await t
                except BaseException:  # noqa: BLE001
                    pass
            for s in seqs:
                if s.finish_reason is None:
                    self.engine.abort(s.request_id)
                if not s.started:
                    s.started = True
                    self.waiting -= 1

    # ------------------------------------------------------------------ logprobs in OpenAI's shapes
    def chat_logprobs(self, entries, top_n: int) -> list[ChatTokenLogprob]:
        def one(token_id: int, logprob: float) -> dict:
            tok = self.token_text(token_id)
            return {"token": tok, "logprob": logprob, "bytes": list(tok.encode("utf-8"))}

        return [
            ChatTokenLogprob(
                **one(e.token_id, e.logprob), top_logprobs=[ChatLogprob(**one(i, lp)) for i, lp in e.top[:top_n]]
            )
            for e in entries
        ]

    def completion_logprobs(self, entries, offset: int, prompt: tuple[list[int], list] | None = None):
        """OpenAI's completions `logprobs` for the tokens (prompt ones first with echo), and the offset after."""
        out = CompletionLogprobs()

        def add(tok: str, logprob: float | None, top: dict | None) -> None:
            nonlocal offset
            out.tokens.append(tok)
            out.token_logprobs.append(logprob)
            out.top_logprobs.append(top)
            out.text_offset.append(offset)
            offset += len(tok)

        if prompt is not None:
            ids, lps = prompt
            for k, tid in enumerate(ids):
                tok = self.token_text(tid)
                lp = lps[k] if k < len(lps) else None
                add(tok, lp, None if lp is None else {tok: lp})
        for e in entries:
            tok = self.token_text(e.token_id)
            top = {self.token_text(i): lp for i, lp in e.top}
            top.setdefault(tok, e.logprob)
            add(tok, e.logprob, top)
        return out, offset

    @staticmethod
    def usage(seqs: list[_Seq]) -> UsageInfo:
        prompt = {s.prompt_index: len(s.prompt_ids) for s in seqs}
        cached: dict[int, int] = {}
        for s in seqs:
            cached[s.prompt_index] = max(cached.get(s.prompt_index, 0), s.num_cached_tokens)
        completion = sum(s.text.num_tokens for s in seqs)
        total_prompt = sum(prompt.values())
        return UsageInfo(
            prompt_tokens=total_prompt,
            completion_tokens=completion,
            total_tokens=total_prompt + completion,
            prompt_tokens_details={"cached_tokens": sum(cached.values())},
        )


async def _parse(request: Request, model_cls):
    raw = await request.body()
    try:
        return model_cls.model_validate_json(raw)
    except ValidationError as err:
        param = field_of_validation_error(err)
        errors = err.errors()
        if errors and errors[0]["type"] == "json_invalid":
            raise APIError(400, f"the body is not valid JSON: {errors[0]['msg']}", "body", "invalid_json") from None
        raise APIError(400, message_of_validation_error(err), param or "body") from None


async def _until_disconnect(request: Request, coro):
    """Run `coro`; if the client disconnects first, cancel it (its sequences are aborted)."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                try:
                    await task
                except BaseException:  # noqa: BLE001
                    pass
                raise APIError(499, "client closed the request")
    finally:
        if not task.done():
            task.cancel()


class _AccessMiddleware:
    """Pure ASGI (streams and disconnects pass untouched): the API key check and request counting."""

    ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics")

    def __init__(self, app, server: _Server):
        self.app = app
        self.server = server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = next((e for e in self.ENDPOINTS if path == e or path.startswith(e + "/")), "other")
        counter = self.server.metrics.requests
        key = self.server.settings.api_key
        if key and path != "/health":
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                counter.labels(endpoint, "401").inc()
                resp = APIError(
                    401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'", None, "invalid_api_key"
                ).response()
                return await resp(scope, receive, send)
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            counter.labels(endpoint, str(status["code"])).inc()


def build_app(engine, tokenizer, settings: ServeSettings) -> FastAPI:
    """The FastAPI application serving `engine` (an `AsyncLLMEngine`) with `tokenizer`."""
    server = _Server(engine, tokenizer, settings)
    app = FastAPI(title="torchformers", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(_AccessMiddleware, server=server)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError):
        return err.response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError):
        errors = [{**e, "loc": tuple(x for x in e["loc"] if x != "body")} for e in err.errors()]
        return APIError(
            400, message_of_validation_error(errors), field_of_validation_error(errors) or "body"
        ).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return APIError(err.status_code, str(err.detail), None, None).response()

    @app.get("/health")
    async def health():
        thread = getattr(engine, "_thread", None)
        if thread is not None and not thread.is_alive():
            raise APIError(503, "the engine is not running", None, "engine_unavailable", retry_after=5)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return ModelList(
            data=[
                ModelCard(
                    id=m, created=server.created, root=settings.served_model_name, max_model_len=server.max_model_len
                )
                for m in server.model_ids()
            ]
        ).model_dump()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id not in server.model_ids():
            raise APIError(404, f"The model '{model_id}' does not exist", "model", "model_not_found")
        return ModelCard(
            id=model_id, created=server.created, root=settings.served_model_name, max_model_len=server.max_model_len
        ).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrival = time.perf_counter()
        req = await _parse(request, ChatCompletionRequest)
        adapter = server.adapter_of(req.model, req.adapter_id)
        server.check_n(req.n)
        try:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        except ValueError as err:
            raise APIError(400, f"messages: {err}", "messages") from None
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            prompt_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        except Exception as err:  # noqa: BLE001 - a template that cannot render these messages
            raise APIError(400, f"messages: the chat template cannot render them: {err}", "messages") from None
        max_field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        top_n = (req.top_logprobs or 0) if req.logprobs else 0
        params = server.sampling(
            req,
            req.max_completion_tokens or req.max_tokens,
            max_field,
            len(prompt_ids),
            "messages",
            adapter,
            top_n if req.logprobs else None,
            False,
        )
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        seqs = server.make_seqs([prompt_ids], [params], req.n, req.stop_list(), rid)
        created = int(time.time())
        if req.stream:
            gens, firsts = await server.start(seqs, arrival, "messages")
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunk(choices, usage=None) -> bytes:
                c = ChatCompletionChunk(id=rid, created=created, model=req.model, choices=choices, usage=usage)
                return _sse(chunk_json(c, include_usage))

            async def stream():
                sent_lp = [0] * len(seqs)
                for s in seqs:
                    yield chunk(
                        [ChatCompletionStreamChoice(index=s.index, delta=DeltaMessage(role="assistant", content=""))]
                    )

                def events(changed):
                    for s in changed:
                        piece = s.text.take()
                        lp = None
                        if req.logprobs and len(s.logprobs) > sent_lp[s.index]:
                            lp = ChatChoiceLogprobs(content=server.chat_logprobs(s.logprobs[sent_lp[s.index] :], top_n))
                            sent_lp[s.index] = len(s.logprobs)
                        if piece or lp:
                            yield chunk(
                                [
                                    ChatCompletionStreamChoice(
                                        index=s.index, delta=DeltaMessage(content=piece), logprobs=lp
                                    )
                                ]
                            )
                        if s.finish_reason is not None:
                            yield chunk(
                                [
                                    ChatCompletionStreamChoice(
                                        index=s.index, delta=DeltaMessage(), finish_reason=s.finish_reason
                                    )
                                ]
                            )

                try:
                    async for changed in server.run(seqs, gens, firsts, arrival):
                        for event in events(changed):
                            yield event
                except Exception as err:  # noqa: BLE001 - the engine failed mid-stream: say so, then end
                    yield _sse(_stream_error(err))
                    yield b"data: [DONE]\n\n"
                    return
                if include_usage:
                    yield chunk([], server.usage(seqs))
                yield b"data: [DONE]\n\n"

            return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        async def complete():
            gens, firsts = await server.start(seqs, arrival, "messages")
            async for _ in server.run(seqs, gens, firsts, arrival):
                pass

        await _until_disconnect(request, complete())
        choices = [
            ChatCompletionChoice(
                index=s.index,
                message=AssistantMessage(content=s.text.text),
                finish_reason=s.finish_reason,
                logprobs=ChatChoiceLogprobs(content=server.chat_logprobs(s.logprobs[: s.text.num_tokens], top_n))
                if req.logprobs
                else None,
            )
            for s in seqs
        ]
        return ChatCompletionResponse(
            id=rid, created=created, model=req.model, choices=choices, usage=server.usage(seqs)
        ).model_dump()

    @app.post("/v1/completions")
    async def completions(request: Request):
        arrival = time.perf_counter()
        req = await _parse(request, CompletionRequest)
        adapter = server.adapter_of(req.model, req.adapter_id)
        server.check_n(req.n)
        if req.suffix:
            raise APIError(400, "suffix is not supported", "suffix")
        if req.best_of is not None and req.best_of != req.n:
            raise APIError(400, "best_of other than n is not supported", "best_of")
        raw_prompts = req.prompts()
        if not raw_prompts:
            raise APIError(400, "prompt is empty", "prompt")
        prompts, texts = [], []
        for p in raw_prompts:
            if isinstance(p, str):
                prompts.append(list(tokenizer(p, add_special_tokens=True)["input_ids"]))
                texts.append(p)
            else:
                if not p:
                    raise APIError(400, "prompt: an empty list of token ids", "prompt")
                if any(t < 0 or t >= server.vocab_size for t in p):
                    raise APIError(400, f"prompt: token ids must be in [0, {server.vocab_size})", "prompt")
                prompts.append(list(p))
                texts.append(tokenizer.decode(list(p), skip_special_tokens=False))
        want_prompt_lp = req.echo and req.logprobs is not None
        params = [
            server.sampling(
                req, req.max_tokens, "max_tokens", len(ids), "prompt", adapter, req.logprobs, want_prompt_lp
            )
            for ids in prompts
        ]
        rid = f"cmpl-{uuid.uuid4().hex}"
        seqs = server.make_seqs(prompts, params, req.n, req.stop_list(), rid)
        created = int(time.time())

        def echo_logprobs(s: _Seq) -> tuple[list[int], list] | None:
            return (s.prompt_ids, s.prompt_logprobs or [None]) if want_prompt_lp else None

        if req.stream:
            gens, firsts = await server.start(seqs, arrival, "prompt")
            include_usage = bool(req.stream_options and req.stream_options.include_usage)

            def chunk(choices, usage=None) -> bytes:
                c = CompletionChunk(id=rid, created=created, model=req.model, choices=choices, usage=usage)
                return _sse(chunk_json(c, include_usage))

            async def stream():
                sent_lp = [0] * len(seqs)
                offsets = [0] * len(seqs)
                echoed = [False] * len(seqs)

                def events(changed):
                    for s in changed:
                        piece = s.text.take()
                        lp = None
                        prompt_part = None
                        if req.echo and not echoed[s.index]:
                            echoed[s.index] = True
                            piece = texts[s.prompt_index] + piece
                            prompt_part = echo_logprobs(s)
                        if req.logprobs is not None:
                            new = s.logprobs[sent_lp[s.index] :]
                            lp, offsets[s.index] = server.completion_logprobs(new, offsets[s.index], prompt_part)
                            sent_lp[s.index] = len(s.logprobs)
                        if piece or s.finish_reason is not None or (lp and lp.tokens):
                            yield chunk(
                                [
                                    CompletionChoice(
                                        index=s.index, text=piece, logprobs=lp, finish_reason=s.finish_reason
                                    )
                                ]
                            )

                try:
                    async for changed in server.run(seqs, gens, firsts, arrival):
                        for event in events(changed):
                            yield event
                except Exception as err:  # noqa: BLE001 - the engine failed mid-stream: say so, then end
                    yield _sse(_stream_error(err))
                    yield b"data: [DONE]\n\n"
                    return
                if include_usage:
                    yield chunk([], server.usage(seqs))
                yield b"data: [DONE]\n\n"

            return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        async def complete():
            gens, firsts = await server.start(seqs, arrival, "prompt")
            async for _ in server.run(seqs, gens, firsts, arrival):
                pass

        await _until_disconnect(request, complete())
        choices = []
        for s in seqs:
            lp = None
            if req.logprobs is not None:
                lp, _ = server.completion_logprobs(s.logprobs[: s.text.num_tokens], 0, echo_logprobs(s))
            text = texts[s.prompt_index] + s.text.text if req.echo else s.text.text
            choices.append(CompletionChoice(index=s.index, text=text, logprobs=lp, finish_reason=s.finish_reason))
        return CompletionResponse(
            id=rid, created=created, model=req.model, choices=choices, usage=server.usage(seqs)
        ).model_dump()

    return app
