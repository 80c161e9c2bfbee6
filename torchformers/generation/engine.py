"""The serving engine: continuous batching over a paged KV cache, chunked prefill, prefix reuse.

`LLMEngine` runs requests the way vLLM's scheduler does, in plain PyTorch. Each request is a list of
tokens (prompt, then what it has generated) and a count of those already in the KV cache; every
`step` gives each running request the tokens it has not computed yet, within two bounds:

* `max_num_seqs` requests run at once; the others wait in arrival order;
* `max_num_batched_tokens` tokens per step. Decoding requests (one token each) are served first,
  then prompts fill what is left of the budget, in chunks: a long prompt is prefilled over several
  steps and never holds the decoding of others back by more than one chunk.

A request joins the running batch at the next step after it arrives and leaves it the step it
finishes; its blocks go back to the pool at once (also when it is aborted, e.g. its client went
away). When the pool runs dry the most recently admitted request is preempted: its blocks are freed
and it is recomputed later from its tokens (what it already generated is kept).

Prefix reuse: a request's full blocks are registered under a hash of their tokens (see
`paged_cache.block_hashes`); a new prompt looks its blocks up and starts computing after the longest
cached prefix. `stats().cached_tokens_total` counts the prompt tokens served that way.

Every step runs all scheduled tokens of all requests as one flat sequence through the model's
`forward_paged` (projections see every token as a row; `PagedKVCache.attention` keeps requests apart),
so a request's tokens and logits do not depend on what else is in the batch. Sampling follows each
request's own `SamplingParams` (greedy, temperature, top-k, top-p, a seed of its own).

`AsyncLLMEngine` steps an `LLMEngine` in a background thread and hands each request's outputs to
the asyncio code that waits for them (the HTTP server, the chat CLI).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from torchformers.generation.paged_cache import BlockAllocator, StepMetadata, block_hashes

__all__ = [
    "AsyncLLMEngine",
    "EngineError",
    "EngineStats",
    "LLMEngine",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
]

logger = logging.getLogger(__name__)


class EngineError(ValueError):
    """A request the engine cannot take; `field` names the request field at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)  # besides the model's eos ids (unless ignore_eos)
    ignore_eos: bool = False
    logprobs: int | None = None  # k: the chosen token's log-probability plus the k most likely tokens
    prompt_logprobs: bool = False  # the log-probability of each prompt token given those before it
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    adapter_id: str | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float
    top: list[tuple[int, float]]  # (token id, log-probability), most likely first


@dataclass
class RequestOutput:
    """What one step produced for one request."""

    request_id: str
    token_ids: list[int]  # new tokens since the request's previous output
    logprobs: list[TokenLogprob] | None
    prompt_logprobs: list[float | None] | None  # first output only, when asked
    finished: bool
    finish_reason: str | None  # "stop", "length" or "abort"
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int


@dataclass
class EngineStats:
    num_running: int
    num_waiting: int
    num_blocks: int
    num_free_blocks: int
    prompt_tokens_total: int  # tokens of the prompts received
    generation_tokens_total: int
    cached_tokens_total: int
    requests_finished_total: dict[str, int]
    num_preemptions_total: int


class _Request:
    def __init__(self, request_id: str, prompt: list[int], params: SamplingParams, stop_ids: set[int]) -> None:
        self.id, self.params, self.stop_ids = request_id, params, stop_ids
        self.tokens = list(prompt)
        self.num_prompt = len(prompt)
        self.num_computed = 0  # tokens whose keys/values are in the cache
        self.num_cached = 0  # prompt tokens found in the prefix cache at admission
        self.blocks: list[int] = []
        self.num_registered = 0  # full blocks registered in the prefix cache
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator().manual_seed(int(params.seed))
        self.prompt_logprobs: list[float | None] | None = [None] if params.prompt_logprobs else None
        self.sent_prompt_logprobs = False
        self.finish_reason: str | None = None

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.num_prompt


class LLMEngine:
    """Continuous batching over a paged KV cache (see the module docstring). One thread drives it."""

    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: Sequence[int] = (),
        max_num_seqs: int = 16,
        max_num_batched_tokens: int = 512,
        block_size: int = 16,
        num_blocks: int | None = None,
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
    ) -> None:
        for name, value in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens),
                            ("block_size", block_size)):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LLMEngine: {name} must be a positive integer, got {value!r}")
        if not hasattr(model, "forward_paged") or not hasattr(model, "paged_kv_caches"):
            raise TypeError(f"LLMEngine: {type(model).__name__} does not implement forward_paged / paged_kv_caches")
        config = getattr(model, "config", None)
        limit = max(getattr(config, "seq_length", 0) or 0, getattr(config, "max_position_embedding", 0) or 0)
        self.max_model_len = int(max_model_len or getattr(config, "seq_length", 0) or limit)
        if self.max_model_len < 2 or (limit and self.max_model_len > limit):
            raise ValueError(f"LLMEngine: max_model_len {self.max_model_len} must be within 2..{limit}")
        self.model = model.eval()
        self.eos_token_ids = [int(t) for t in eos_token_ids]
        self.max_num_seqs, self.max_num_batched_tokens, self.block_size = (
            max_num_seqs,
            max_num_batched_tokens,
            block_size,
        )
        blocks_per_seq = math.ceil(self.max_model_len / block_size)
        self.num_blocks = int(num_blocks or blocks_per_seq * max_num_seqs)
        if self.num_blocks < blocks_per_seq:
            raise ValueError(
                f"LLMEngine: num_blocks {self.num_blocks} cannot hold one request of max_model_len "
                f"{self.max_model_len} ({blocks_per_seq} blocks of {block_size})"
            )
        self.allocator = BlockAllocator(self.num_blocks, block_size, enable_prefix_caching)
        self.caches = model.paged_kv_caches(self.num_blocks, block_size)
        self.device = self.caches[0].key_cache.device
        self.waiting: deque[_Request] = deque()
        self.running: list[_Request] = []
        self.requests: dict[str, _Request] = {}
        self._finished_outputs: list[RequestOutput] = []
        self._prompt_tokens = self._generation_tokens = self._cached_tokens = self._preemptions = 0
        self._finished: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}

    # ------------------------------------------------------------------ requests
    def check_request(self, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise EngineError when the request cannot run (its field named); nothing is changed."""
        n = len(prompt_ids)
        if n == 0:
            raise EngineError("the prompt is empty", "prompt")
        if n >= self.max_model_len:
            raise EngineError(
                f"the prompt has {n} tokens; this model's context is {self.max_model_len} tokens, so a prompt "
                f"may have at most {self.max_model_len - 1}",
                "prompt",
            )
        if not isinstance(params.max_tokens, int) or params.max_tokens < 1:
            raise EngineError(f"max_tokens must be a positive integer, got {params.max_tokens!r}", "max_tokens")
        if n + params.max_tokens > self.max_model_len:
            raise EngineError(
                f"max_tokens {params.max_tokens} plus the prompt's {n} tokens exceeds the context of "
                f"{self.max_model_len} tokens (at most {self.max_model_len - n} new tokens for this prompt)",
                "max_tokens",
            )
        if params.temperature < 0:
            raise EngineError(f"temperature must be >= 0, got {params.temperature}", "temperature")
        if not 0 < params.top_p <= 1:
            raise EngineError(f"top_p must be in (0, 1], got {params.top_p}", "top_p")
        if params.top_k < 0:
            raise EngineError(f"top_k must be >= 0, got {params.top_k}", "top_k")
        if params.logprobs is not None and not 0 <= params.logprobs <= 20:
            raise EngineError(f"logprobs must be between 0 and 20, got {params.logprobs}", "logprobs")
        if params.repetition_penalty <= 0:
            raise EngineError(f"repetition_penalty must be > 0, got {params.repetition_penalty}", "repetition_penalty")
        if params.adapter_id is not None:
            raise EngineError("per-request adapters are not served; the model is served as configured", "adapter_id")
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        if vocab and any(not 0 <= int(t) < vocab for t in prompt_ids):
            raise EngineError(f"prompt token ids must be in 0..{vocab - 1}", "prompt")

    def add_request(self, request_id: str, prompt_ids: Sequence[int], params: SamplingParams) -> None:
        self.check_request(prompt_ids, params)
        if request_id in self.requests:
            raise EngineError(f"request id {request_id!r} is already running", "request_id")
        stop_ids = set(int(t) for t in params.stop_token_ids)
        if not params.ignore_eos:
            stop_ids.update(self.eos_token_ids)
        request = _Request(request_id, [int(t) for t in prompt_ids], params, stop_ids)
        self.requests[request_id] = request
        self._prompt_tokens += request.num_prompt
        self.waiting.append(request)

    def abort_request(self, request_id: str) -> None:
        request = self.requests.get(request_id)
        if request is not None:
            self._finish(request, "abort")

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests) or bool(self._finished_outputs)

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=len(self.running), num_waiting=len(self.waiting), num_blocks=self.num_blocks,
            num_free_blocks=self.allocator.num_free, prompt_tokens_total=self._prompt_tokens,
            generation_tokens_total=self._generation_tokens, cached_tokens_total=self._cached_tokens,
            requests_finished_total=dict(self._finished), num_preemptions_total=self._preemptions,
        )  # fmt: skip

    def _finish(self, request: _Request, reason: str) -> None:
        request.finish_reason = reason
        self.allocator.release(request.blocks)
        request.blocks = []
        if request in self.running:
            self.running.remove(request)
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        del self.requests[request.id]
        self._finished[reason] += 1
        if reason == "abort":
            self._finished_outputs.append(self._output(request, [], None))

    def _output(self, request: _Request, new_tokens: list[int], logprobs: list[TokenLogprob] | None) -> RequestOutput:
        prompt_logprobs = None
        if request.prompt_logprobs is not None and not request.sent_prompt_logprobs:
            prompt_logprobs, request.sent_prompt_logprobs = request.prompt_logprobs, True
        return RequestOutput(
            request.id, new_tokens, logprobs, prompt_logprobs, request.finish_reason is not None,
            request.finish_reason, request.num_prompt, request.num_cached, request.num_output,
        )  # fmt: skip

    # ------------------------------------------------------------------ scheduling
    def _blocks_needed(self, request: _Request, num_tokens: int) -> int:
        return max(0, math.ceil(num_tokens / self.block_size) - len(request.blocks))

    def _reserve(self, request: _Request, num_tokens: int) -> bool:
        """Give `request` blocks for its first `num_tokens` tokens; False (nothing taken) if there are too few."""
        need = self._blocks_needed(request, num_tokens)
        if need > self.allocator.num_free:
            return False
        request.blocks.extend(self.allocator.allocate() for _ in range(need))
        return True

    def _preempt(self, request: _Request) -> None:
        self.allocator.release(request.blocks)
        request.blocks, request.num_computed, request.num_registered = [], 0, 0
        self.running.remove(request)
        self.waiting.appendleft(request)
        self._preemptions += 1

    def _admit(self, request: _Request) -> None:
        """Start `request` after its longest cached prefix (not when its prompt log-probabilities are wanted:
        those need every prompt position computed)."""
        if request.params.prompt_logprobs:
            return
        keys = block_hashes(request.tokens, self.block_size)
        if (len(keys) * self.block_size) >= len(request.tokens):
            keys = keys[:-1]  # the last token is always computed: its logits give the next token
        hits = self.allocator.lookup(keys)
        request.blocks = hits
        request.num_computed = request.num_registered = len(hits)
        request.num_computed *= self.block_size
        if request.num_prompt == len(request.tokens):  # not a preempted request coming back
            request.num_cached = request.num_computed
            self._cached_tokens += request.num_computed

    def _schedule(self) -> list[tuple[_Request, int]]:
        """This step's `(request, number of tokens)`, decoding requests first."""
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[_Request, int]] = []
        # running requests: decoders need one token each; a partly prefilled prompt continues with a chunk
        for request in sorted(self.running, key=lambda r: len(r.tokens) - r.num_computed > 1):
            if request not in self.running:  # preempted to make room for an earlier one
                continue
            n = min(len(request.tokens) - request.num_computed, budget)
            if n <= 0:
                continue
            while not self._reserve(request, request.num_computed + n):
                victim = self.running[-1]  # the most recently admitted gives its blocks back
                self._preempt(victim)
                budget += sum(k for r, k in scheduled if r is victim)
                scheduled = [(r, k) for r, k in scheduled if r is not victim]
                if victim is request:
                    break
            else:
                scheduled.append((request, n))
                budget -= n
                if budget == 0:
                    break
        # waiting requests join while there is room
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            self._admit(request)
            n = min(len(request.tokens) - request.num_computed, budget)
            if not self._reserve(request, request.num_computed + n):
                self.allocator.release(request.blocks)
                request.blocks, request.num_computed, request.num_registered = [], 0, 0
                if request.num_prompt == len(request.tokens):
                    self._cached_tokens -= request.num_cached
                    request.num_cached = 0
                break
            self.waiting.popleft()
            self.running.append(request)
            scheduled.append((request, n))
            budget -= n
        return scheduled

    # ------------------------------------------------------------------ one step
    @torch.inference_mode()
    def step(self) -> list[RequestOutput]:
        """Schedule, run one forward of every scheduled token, sample; the outputs of this step."""
        outputs, self._finished_outputs = self._finished_outputs, []
        scheduled = self._schedule()
        if not scheduled:
            return outputs
        # decoders (one token) first, as StepMetadata lays them out
        scheduled.sort(key=lambda item: item[1] > 1 or item[0].num_computed == 0)
        num_decodes = 0
        for request, n in scheduled:
            if n == 1 and request.num_computed > 0:
                num_decodes += 1
            else:
                break
        ids, positions, slots, logits_rows, sampling = [], [], [], [], []
        prefills = []
        bs = self.block_size
        for request, n in scheduled:
            start = len(ids)
            begin = request.num_computed
            ids.extend(request.tokens[begin : begin + n])
            positions.extend(range(begin, begin + n))
            slots.extend(request.blocks[p // bs] * bs + p % bs for p in range(begin, begin + n))
            completes = begin + n == len(request.tokens)
            if request.params.prompt_logprobs and begin < request.num_prompt:
                logits_rows.extend(range(start, start + n))  # every position: prompt log-probabilities
            elif completes:
                logits_rows.append(start + n - 1)
            if completes:
                sampling.append(request)
            if start >= num_decodes:
                table = None
                if begin:
                    table = torch.tensor(request.blocks[: math.ceil((begin + n) / bs)], device=self.device)
                prefills.append((start, n, begin, table))
        decode_tables = decode_mask = None
        if num_decodes:
            width = max(math.ceil(len(r.tokens) / bs) for r, _ in scheduled[:num_decodes])
            tables = torch.zeros((num_decodes, width), dtype=torch.long)
            lengths = torch.empty(num_decodes, dtype=torch.long)
            for i, (request, _) in enumerate(scheduled[:num_decodes]):
                used = request.blocks[: math.ceil((request.num_computed + 1) / bs)]
                tables[i, : len(used)] = torch.tensor(used, dtype=torch.long)
                lengths[i] = request.num_computed + 1
            decode_mask = (torch.arange(width * bs)[None, :] < lengths[:, None])[:, None, None, :]
            decode_tables, decode_mask = tables.to(self.device), decode_mask.to(self.device)
        meta = StepMetadata(torch.tensor(slots, dtype=torch.long, device=self.device), num_decodes,
                            decode_tables, decode_mask, prefills)  # fmt: skip
        for cache in self.caches:
            cache.metadata = meta
        logits = self.model.forward_paged(
            torch.tensor([ids], dtype=torch.long, device=self.device),
            torch.tensor([positions], dtype=torch.long, device=self.device),
            self.caches,
            torch.tensor(logits_rows, dtype=torch.long, device=self.device),
        ).float()  # (len(logits_rows), vocab)
        for cache in self.caches:
            cache.metadata = None
        return outputs + self._after_forward(scheduled, logits, logits_rows)

    def _after_forward(self, scheduled, logits: torch.Tensor, logits_rows: list[int]) -> list[RequestOutput]:
        outputs = []
        starts = list(itertools.accumulate([0] + [n for _, n in scheduled]))
        row_of = {r: i for i, r in enumerate(logits_rows)}
        argmax = logits.argmax(dim=-1).tolist()  # every greedy row at once
        for (request, n), start in zip(scheduled, starts):
            begin = request.num_computed
            request.num_computed += n
            self._register_full_blocks(request)
            if request.params.prompt_logprobs and begin < request.num_prompt:
                self._prompt_logprobs(request, logits, row_of, start, begin, n)
            if request.num_computed < len(request.tokens):
                continue  # a prompt chunk: nothing to sample yet
            row = row_of[start + n - 1]
            token, logprob = self._sample(request, logits[row], argmax[row])
            request.tokens.append(token)
            self._generation_tokens += 1
            if token in request.stop_ids:  # (not before min_tokens: _sample masks them until then)
                reason = "stop"
            elif request.num_output >= request.params.max_tokens or len(request.tokens) >= self.max_model_len:
                reason = "length"
            else:
                reason = None
            if reason is not None:
                self._finish(request, reason)
            outputs.append(self._output(request, [token], None if logprob is None else [logprob]))
        return outputs

    def _register_full_blocks(self, request: _Request) -> None:
        full = request.num_computed // self.block_size
        if full <= request.num_registered or not self.allocator.enable_prefix_caching:
            return
        keys = block_hashes(request.tokens[: full * self.block_size], self.block_size)
        for i in range(request.num_registered, full):
            self.allocator.register(request.blocks[i], keys[i])
        request.num_registered = full

    @staticmethod
    def _prompt_logprobs(request: _Request, logits, row_of, start: int, begin: int, n: int) -> None:
        """Log-probability of prompt tokens `begin + 1 .. begin + n` from the logits of positions `begin ..`."""
        last = min(begin + n, request.num_prompt - 1)  # position predicting the last prompt token
        if last <= begin or len(request.prompt_logprobs) != begin + 1:  # nothing new (or recomputed after preemption)
            return
        rows = torch.tensor([row_of[start + p - begin] for p in range(begin, last)], device=logits.device)
        targets = torch.tensor(request.tokens[begin + 1 : last + 1], device=logits.device)
        logp = torch.log_softmax(logits.index_select(0, rows), dim=-1).gather(1, targets[:, None])[:, 0]
        request.prompt_logprobs.extend(logp.tolist())

    def _sample(self, request: _Request, logits: torch.Tensor, argmax: int) -> tuple[int, TokenLogprob | None]:
        """The next token of `request` from its logits `(vocab,)` (`argmax` is theirs, computed for the batch)."""
        params = request.params
        raw = logits
        scores = logits
        plain = params.repetition_penalty == 1.0 and not (params.min_tokens and request.num_output < params.min_tokens)
        if params.greedy and plain and params.logprobs is None:
            return argmax, None
        if params.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(request.tokens)), device=logits.device)
            picked = scores.index_select(0, seen)
            picked = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
            scores = scores.clone().index_copy_(0, seen, picked)
        if params.min_tokens and request.num_output < params.min_tokens and request.stop_ids:
            scores = scores.clone()
            scores[torch.tensor(sorted(request.stop_ids), device=logits.device)] = -math.inf
        if params.greedy:
            token = int(torch.argmax(scores))
        else:
            scores = scores / params.temperature
            if params.top_k:
                kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
                scores = scores.masked_fill(scores < kth, -math.inf)
            probs = torch.softmax(scores, dim=-1)
            if params.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                drop = (sorted_probs.cumsum(0) - sorted_probs) >= params.top_p  # keep the smallest set reaching top_p
                sorted_probs = sorted_probs.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            token = int(torch.multinomial(probs, 1, generator=request.generator))
        if params.logprobs is None:
            return token, None
        logp = torch.log_softmax(raw, dim=-1)
        top = []
        if params.logprobs:
            values, ids = torch.topk(logp, params.logprobs)
            top = list(zip(ids.tolist(), values.tolist()))
        return token, TokenLogprob(token, float(logp[token]), top)


class AsyncLLMEngine:
    """An `LLMEngine` stepped by a background thread; `generate` is awaited from asyncio code.

    Requests and aborts are queued to the thread, which applies them between steps; each request's
    outputs come back through its own `asyncio.Queue` on the loop that asked. The thread sleeps while
    there is nothing to do."""

    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._pending: list[tuple[str, Any]] = []  # ("add", (id, prompt, params)) or ("abort", id)
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self._stopped = False
        self._stats = engine.stats()
        self._thread = threading.Thread(target=self._loop, name="torchformers-engine", daemon=True)
        self._thread.start()

    def stats(self) -> EngineStats:
        """The engine's counters as of its last step (read without stopping it)."""
        with self._lock:
            stats = self._stats
            waiting = sum(1 for kind, _ in self._pending if kind == "add")
        if waiting:
            stats = EngineStats(**{**stats.__dict__, "num_waiting": stats.num_waiting + waiting})
        return stats

    def _deliver(self, output: RequestOutput | BaseException, request_id: str) -> None:
        entry = self._queues.get(request_id)
        if entry is not None:
            loop, queue = entry
            try:
                loop.call_soon_threadsafe(queue.put_nowait, output)
            except RuntimeError:  # the loop is closed
                self._queues.pop(request_id, None)

    def _loop(self) -> None:
        engine = self.engine
        while True:
            with self._wake:
                while not self._stopped and not self._pending and not engine.has_unfinished_requests():
                    self._wake.wait()
                if self._stopped:
                    return
                pending, self._pending = self._pending, []
            for kind, payload in pending:
                if kind == "abort":
                    engine.abort_request(payload)
                    continue
                request_id, prompt, params = payload
                try:
                    engine.add_request(request_id, prompt, params)
                except Exception as error:  # noqa: BLE001 - handed to the request's caller
                    self._deliver(error, request_id)
            try:
                outputs = engine.step()
            except Exception as error:  # noqa: BLE001 - every running request fails with it; the engine goes on
                logger.exception("engine step failed")
                for request_id in list(engine.requests):
                    engine.abort_request(request_id)
                    self._deliver(error, request_id)
                engine._finished_outputs.clear()
                outputs = []
            with self._lock:
                self._stats = engine.stats()
            for output in outputs:
                self._deliver(output, output.request_id)

    def _submit(self, kind: str, payload: Any) -> None:
        with self._wake:
            self._pending.append((kind, payload))
            self._wake.notify()

    def abort(self, request_id: str) -> None:
        self._submit("abort", request_id)

    async def generate(
        self, prompt_ids: Sequence[int], params: SamplingParams, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """The outputs of one request as they come; raises EngineError before the first for a bad request.
        Leaving the iteration early (the client went away) aborts the request and frees its blocks."""
        self.engine.check_request(prompt_ids, params)
        if self._stopped:
            raise RuntimeError("AsyncLLMEngine: the engine is shut down")
        request_id = request_id or f"req-{next(self._ids)}"
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = (asyncio.get_running_loop(), queue)
        finished = False
        try:
            self._submit("add", (request_id, list(prompt_ids), params))
            while not finished:
                output = await queue.get()
                if isinstance(output, BaseException):
                    raise output
                finished = output.finished
                yield output
        finally:
            self._queues.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def shutdown(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(timeout=10)
