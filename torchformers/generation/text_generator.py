"""`GenerationMixin.generate`: MindFormers' signature and results, gpt-fast's loop.

Follows MindFormers `mindformers/generation/text_generator.py` for the interface (a list of prompts
of token ids in, a list of int32 arrays prompt + completion out, several eos ids, min/max length,
`max_new_tokens`, repetition penalty, temperature / top-k / top-p, streamers) and gpt-fast
(`generate.py`) for the mechanics: prompts are left-padded into one batch, a static KV cache is
allocated once, one prefill step runs the prompts, then a one-token decode step (optionally
`torch.compile`d) runs per new token. Sampling stays on the device; the loop reads one flag per step
back to stop early once every row has finished.

A model using this mixin implements `setup_kv_cache(batch_size, max_length)` (which stores its caches
and `(batch_size, max_length)` in `generation_state(model)`), `clear_kv_cache()`,
`forward_with_cache(input_ids, position_ids, cache_position, attention_mask, kv_caches=None) -> (B, vocab)`
and `prepare_inputs_for_generation`; with `use_past=False` it is called as `model(input_ids,
position_ids=..., attention_mask=(B, T))` and must return logits `(B, T, vocab)`.

With `num_beams > 1` the batch holds `num_beams` rows per prompt and `beam_search.BeamSearch` picks
each step's tokens (transformers' `_beam_search`); the KV cache rows are reordered in place by the
beam each row continues, so the decode step (compiled or not) keeps its buffers.

What generation keeps between calls (the caches, the shape they were made for, the compiled decode
step) lives in a `GenerationState` held per model outside it, so the model holds its weights only.
A model with S-LoRA adapters (`pet_type: slora`) also has its adapter selector there: `adapter_id=`
(one adapter name for every row, MindFormers' `generate`) or `adapter_ids=` (one name or None per row,
MindFormers' `ModelRunner`) choose the adapter of each row for the duration of the call.
"""

from __future__ import annotations

import copy
import functools
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from torchformers.errors import ConfigError
from torchformers.generation.beam_search import BeamSearch
from torchformers.generation.generation_config import GenerationConfig
from torchformers.generation.logits_process import (
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    sample_from_logits,
)

__all__ = ["GenerateOutput", "GenerationMixin", "GenerationState", "generation_state"]

logger = logging.getLogger(__name__)

_CACHE_ALIGN = 64  # cache lengths are rounded up so a compiled decode step is reused across calls


@dataclass
class GenerateOutput:
    sequences: list[np.ndarray]
    scores: list[torch.Tensor] | None = None
    logits: list[torch.Tensor] | None = None
    sequences_scores: torch.Tensor | None = None  # beam search: the score of each returned sequence


@dataclass
class GenerationState:
    """What generation keeps for one model between calls."""

    kv_caches: list[Any] | None = None  # one cache per layer, allocated by the model's setup_kv_cache
    kv_cache_shape: tuple[int, int] | None = None  # (batch, slots) the caches were allocated for
    compiled_decode: Callable | None = None  # torch.compile of the model class's forward_with_cache
    # S-LoRA (pet.slora.AdapterRows): `select(adapter_ids, batch_size, device)` picks each row's adapter,
    # `clear()` returns to the base model; set by `get_slora_model`
    adapter_rows: Any = None


# Weak keys: the state goes with its model. No value refers to the model (the compiled step is of the
# unbound method), or the model would never be freed.
_STATES: weakref.WeakKeyDictionary[Any, GenerationState] = weakref.WeakKeyDictionary()


def generation_state(model: Any) -> GenerationState:
    """The generation state of `model`, created empty on first use."""
    state = _STATES.get(model)
    if state is None:
        state = _STATES[model] = GenerationState()
    return state


def _to_prompts(input_ids: Any, pad_token_id: int, attention_mask: Any = None) -> list[list[int]]:
    """A list of ids, a list of lists, or a 1-D/2-D array/tensor -> a list of prompts.

    Rows of a 2-D array are cut at their last non-pad token (MindFormers' valid length), or by
    `attention_mask` when one is given (then left padding works too).
    """
    if isinstance(input_ids, torch.Tensor):
        input_ids = input_ids.detach().cpu().numpy()
    if isinstance(input_ids, np.ndarray):
        array = input_ids.reshape(1, -1) if input_ids.ndim == 1 else input_ids
        if array.ndim != 2:
            raise ValueError(f"generate: input_ids must be 1-D or 2-D, got shape {input_ids.shape}")
        if attention_mask is not None:
            keep = np.asarray(attention_mask.cpu() if isinstance(attention_mask, torch.Tensor) else attention_mask)
            return [[int(t) for t, k in zip(row, m) if k] for row, m in zip(array, keep.reshape(array.shape))]
        prompts = []
        for row in array:
            valid = np.nonzero(row != pad_token_id)[0]
            prompts.append([int(t) for t in row[: valid[-1] + 1]] if len(valid) else [])
        return prompts
    if isinstance(input_ids, (list, tuple)):
        if not input_ids:
            raise ValueError("generate: input_ids is empty")
        if all(isinstance(t, (int, np.integer)) for t in input_ids):
            return [[int(t) for t in input_ids]]
        return [[int(t) for t in row] for row in input_ids]
    raise TypeError(f"generate: input_ids must be a list of ids, a list of lists, or an array; got {type(input_ids)}")


def _num_beams(cfg: GenerationConfig, streamer: Any) -> int:
    """`cfg.num_beams`, checked with the settings that go with it."""
    num_beams = cfg.num_beams if cfg.num_beams is not None else 1
    if not isinstance(num_beams, (int, np.integer)) or num_beams < 1:
        raise ConfigError(f"generate: num_beams must be a positive integer, got {num_beams!r}")
    n_ret = cfg.num_return_sequences if cfg.num_return_sequences is not None else 1
    if num_beams == 1:
        if n_ret != 1:
            raise ConfigError(
                f"generate: num_return_sequences={n_ret!r} needs beam search with at least that many beams "
                "(num_beams is 1)"
            )
        return 1
    if not isinstance(n_ret, (int, np.integer)) or not 1 <= n_ret <= num_beams:
        raise ConfigError(f"generate: num_return_sequences must be in 1..num_beams ({num_beams}), got {n_ret!r}")
    if cfg.early_stopping not in (None, True, False, "never"):
        raise ConfigError(f"generate: early_stopping must be True, False, 'never' or None, got {cfg.early_stopping!r}")
    if streamer is not None:
        raise ConfigError(f"generate: a streamer cannot follow beam search (num_beams={num_beams})")
    return int(num_beams)


def _adapter_ids(adapter_id: Any, adapter_ids: Any, adapter_rows: Any) -> list | None:
    """`adapter_id` (one name for all rows) or `adapter_ids` (one per row) as a list, or None."""
    if adapter_id is None and adapter_ids is None:
        return None
    if adapter_rows is None:
        raise ConfigError(
            "generate: adapter_id / adapter_ids choose S-LoRA adapters, but this model has none "
            "(model_config.pet_config with pet_type: slora loads them)"
        )
    if adapter_id is not None and adapter_ids is not None:
        raise ConfigError("generate: give adapter_id (one adapter, every row) or adapter_ids (one per row), not both")
    if adapter_id is not None:
        return [adapter_id]
    if isinstance(adapter_ids, str):
        raise ConfigError(f"generate: adapter_ids is a list with one adapter name per row, got {adapter_ids!r}")
    return list(adapter_ids)


class GenerationMixin:
    """Adds `generate` to a model (see the module docstring for what the model provides)."""

    def _max_positions(self) -> int:
        cfg = self.config
        return max(getattr(cfg, "seq_length", 0) or 0, getattr(cfg, "max_position_embedding", 0) or 0)

    def _build_processors(self, cfg: GenerationConfig, min_lengths: torch.Tensor) -> LogitsProcessorList:
        processors = LogitsProcessorList()
        if cfg.repetition_penalty is not None and cfg.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
        if cfg.eos_token_ids and bool((min_lengths > 0).any()):
            processors.append(MinLengthLogitsProcessor(min_lengths, cfg.eos_token_ids))
        if cfg.do_sample:
            if cfg.temperature is not None and cfg.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(cfg.temperature))
            if cfg.top_k:
                processors.append(TopKLogitsWarper(int(cfg.top_k)))
            if cfg.top_p is not None and cfg.top_p < 1.0:
                processors.append(TopPLogitsWarper(cfg.top_p))
        return processors

    def _decode_step(self, compile_decode: bool) -> Callable:
        if not compile_decode:
            return self.forward_with_cache
        if any(hasattr(m, "packed_weight") for m in self.modules()):
            # oneDNN-prepacked weights (prepare_for_cpu_inference) are opaque to torch.compile
            logger.warning("generate: compile_decode ignored for a model prepared by prepare_for_cpu_inference")
            return self.forward_with_cache
        state = generation_state(self)
        if state.compiled_decode is None:
            mode = "reduce-overhead" if next(self.parameters()).is_cuda else None
            state.compiled_decode = torch.compile(
                type(self).forward_with_cache, mode=mode, fullgraph=True, dynamic=False
            )
        return functools.partial(state.compiled_decode, self)

    @torch.no_grad()
    def generate(
        self,
        input_ids: Any,
        generation_config: GenerationConfig | None = None,
        logits_processor: LogitsProcessorList | None = None,
        streamer: Any = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> list[np.ndarray] | GenerateOutput:
        """Continue each prompt; returns a list of int32 arrays, each the prompt plus its new tokens
        (up to and including the eos that stopped it), or a `GenerateOutput` with
        `return_dict_in_generate=True`.

        Args:
            input_ids: a list of token ids, a list of lists (any lengths), or a 1-D/2-D array/tensor
                (2-D rows are cut after their last non-pad token, or by `attention_mask=`).
            generation_config: defaults to `self.generation_config`; `kwargs` override its fields
                (max_length, max_new_tokens, min_length, min_new_tokens, do_sample, temperature,
                top_k, top_p, repetition_penalty, eos_token_id (int or list), pad_token_id, use_past,
                compile_decode, return_dict_in_generate, output_scores, output_logits, num_beams,
                length_penalty, early_stopping, num_return_sequences). With `num_beams > 1` (beam
                search; do_sample is then ignored, as in MindFormers) the result holds the best
                `num_return_sequences` hypotheses per prompt, prompt by prompt, and a `GenerateOutput`
                also their `sequences_scores`.
            logits_processor: extra processors applied after the built-in ones.
            streamer: a `TextStreamer`/`TextIteratorStreamer` (batch of one prompt only).
            seed: seeds the sampling generator.
            adapter_id / adapter_ids (keyword): with S-LoRA adapters loaded (`pet_type: slora`), the
                adapter name for every row, or a list of one name (or None, the base model) per row.
        """
        cfg = copy.deepcopy(generation_config or getattr(self, "generation_config", None) or GenerationConfig())
        attention_mask = kwargs.pop("attention_mask", None)
        adapter_rows = generation_state(self).adapter_rows
        adapter_id = kwargs.pop("adapter_id", None)
        adapter_ids = _adapter_ids(adapter_id, kwargs.pop("adapter_ids", None), adapter_rows)
        unused = cfg.update(**kwargs)
        if unused:
            raise TypeError(f"generate: unknown arguments {sorted(unused)}")
        pad = 0 if cfg.pad_token_id is None else int(cfg.pad_token_id)
        eos = cfg.eos_token_ids
        prompts = _to_prompts(input_ids, pad, attention_mask)
        lengths = [len(p) for p in prompts]
        if min(lengths) == 0:
            raise ValueError("generate: a prompt is empty (give at least one token per prompt)")
        B = len(prompts)
        if streamer is not None and B > 1:
            raise ValueError(f"generate: a streamer needs a single prompt, got a batch of {B}")

        # per-row limits on the total length (prompt + new tokens)
        limit_cap = self._max_positions()
        if cfg.max_new_tokens is not None:
            limits = [n + int(cfg.max_new_tokens) for n in lengths]
        else:
            limits = [int(cfg.max_length)] * B
            too_long = [i for i, n in enumerate(lengths) if n > limits[i]]
            if too_long:
                raise ValueError(
                    f"generate: prompt {too_long[0]} has {lengths[too_long[0]]} tokens, more than max_length "
                    f"{cfg.max_length}; raise max_length or set max_new_tokens"
                )
        if limit_cap and max(limits) > limit_cap:
            logger.warning("generate: max length %d clipped to the model's %d positions", max(limits), limit_cap)
            limits = [min(lim, limit_cap) for lim in limits]
            if any(n > limit_cap for n in lengths):
                raise ValueError(f"generate: a prompt is longer than the model's {limit_cap} positions")
        min_total = [max(int(cfg.min_length or 0), n + int(cfg.min_new_tokens or 0)) for n in lengths]

        num_beams = _num_beams(cfg, streamer)
        device = next(self.parameters()).device
        P = max(lengths)
        steps = max(lim - n for lim, n in zip(limits, lengths))
        # left-padded prompts; -1 marks padding in `seqs` (what logits processors see)
        seqs = torch.full((B, P + steps), -1, dtype=torch.long)
        for i, p in enumerate(prompts):
            seqs[i, P - len(p) : P] = torch.tensor(p, dtype=torch.long)
        seqs = seqs.to(device)
        beams = None
        if num_beams > 1:
            # beam search decodes num_beams rows per prompt; MindFormers forces do_sample=False for it
            length_penalty = 1.0 if cfg.length_penalty is None else float(cfg.length_penalty)
            early_stopping = False if cfg.early_stopping is None else cfg.early_stopping
            max_new = torch.tensor(limits) - torch.tensor(lengths)
            beams = BeamSearch(seqs, P, max_new, num_beams, length_penalty, early_stopping, eos)
            cfg.do_sample = False
            B = B * num_beams
            seqs = seqs.repeat_interleave(num_beams, dim=0)
            lengths, limits, min_total = (
                [v for v in vals for _ in range(num_beams)] for vals in (lengths, limits, min_total)
            )
        valid = seqs[:, :P] >= 0  # (B, P)
        tokens = seqs[:, :P].clamp(min=0).masked_fill(~valid, pad)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)  # (B, P) RoPE positions from each row's start
        lengths_t = torch.tensor(lengths, device=device)
        limits_t = torch.tensor(limits, device=device)
        eos_t = torch.tensor(eos if eos else [-2], device=device)
        processors = self._build_processors(cfg, torch.tensor(min_total, device=device))
        if logits_processor:
            processors.extend(logits_processor)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=device).manual_seed(int(seed))
        scores_out, logits_out = [], []

        if streamer is not None:
            streamer.put(torch.tensor(prompts[0]))

        if adapter_rows is not None:
            if adapter_id is not None:
                adapter_ids = adapter_ids * len(prompts)  # adapter_id: the same adapter for every row
            if adapter_ids is not None and num_beams > 1:
                adapter_ids = [a for a in adapter_ids for _ in range(num_beams)]
            adapter_rows.select(adapter_ids, B, device)
        was_training = self.training
        self.eval()
        try:
            if cfg.use_past:
                cache_len = -(-(P + steps) // _CACHE_ALIGN) * _CACHE_ALIGN
                state = generation_state(self)
                if state.kv_caches is None or state.kv_cache_shape != (B, cache_len):
                    # a compiled decode step is specialised to its cache buffers: reuse them when they fit
                    self.setup_kv_cache(B, cache_len)
                slots = torch.arange(cache_len, device=device)
                kv_valid = torch.zeros(B, cache_len, dtype=torch.bool, device=device)
                kv_valid[:, :P] = valid
                query = torch.arange(P, device=device)[:, None]
                causal = slots[None, :] <= query  # (P, cache_len)
                # padded query rows attend to themselves only, so attention stays finite
                mask = (causal[None] & kv_valid[:, None, :]) | (slots[None, :] == query)[None]
                inputs = self.prepare_inputs_for_generation(
                    tokens, position_ids=positions, cache_position=torch.arange(P, device=device),
                    attention_mask=mask[:, None],
                )  # fmt: skip
                logits = self.forward_with_cache(**inputs, kv_caches=state.kv_caches)  # (B, vocab)
                decode = self._decode_step(bool(cfg.compile_decode))

                def decode_next(next_token: torch.Tensor, step: int) -> torch.Tensor:
                    """One decode step through the cache: the tokens `(B,)` chosen at `step` -> logits `(B, vocab)`."""
                    slot = P + step
                    kv_valid[:, slot] = True
                    # a row past its own limit keeps decoding (its tokens are dropped) at its last position,
                    # so a shorter prompt beside it cannot push it past the model's positions
                    inputs = self.prepare_inputs_for_generation(
                        next_token[:, None], position_ids=torch.minimum(lengths_t + step, limits_t - 1)[:, None],
                        cache_position=slots[slot : slot + 1], attention_mask=kv_valid[:, None, None, :],
                    )  # fmt: skip
                    logits = decode(**inputs, kv_caches=state.kv_caches)
                    # CUDA graph outputs are overwritten by the next replay
                    return logits.clone() if cfg.compile_decode else logits
            else:
                logits = self._full_step(seqs[:, :P], pad)

            if beams is not None:
                for step in range(steps):
                    log_probs = processors(beams.flat_running(P + step), torch.log_softmax(logits.float(), dim=-1))
                    if cfg.output_logits:
                        logits_out.append(logits)
                    if cfg.output_scores:
                        scores_out.append(log_probs)
                    next_token, rows, finished = beams.step(log_probs)
                    if finished or step == steps - 1:
                        break
                    if cfg.use_past:
                        for cache in state.kv_caches:  # each beam continues the cache rows of the beam it extends
                            cache.reorder(rows)
                        logits = decode_next(next_token, step)
                    else:
                        logits = self._full_step(beams.flat_running(P + step + 1), pad)
                steps = 0  # the sampling loop below does not run
            done = torch.zeros(B, dtype=torch.bool, device=device)
            n_run = 0
            for step in range(steps):
                scores = processors(seqs[:, : P + step], logits)
                if cfg.output_logits:
                    logits_out.append(logits)
                if cfg.output_scores:
                    scores_out.append(scores)
                next_token = sample_from_logits(scores, cfg.do_sample, generator)  # (B,)
                seqs[:, P + step] = next_token
                n_run = step + 1
                done = done | torch.isin(next_token, eos_t) | (lengths_t + step + 1 >= limits_t)
                if streamer is not None:
                    streamer.put(next_token.cpu())
                if step == steps - 1 or bool(done.all()):
                    break
                if cfg.use_past:
                    logits = decode_next(next_token, step)
                else:
                    logits = self._full_step(seqs[:, : P + step + 1], pad)
        finally:
            if adapter_rows is not None:
                adapter_rows.clear()
            if cfg.use_past and not cfg.compile_decode:
                self.clear_kv_cache()  # free the memory; a compiled step keeps its cache for the next call
            self.train(was_training)
            if streamer is not None:
                streamer.end()

        if beams is not None:
            completions, sequence_scores = beams.best(int(cfg.num_return_sequences or 1))
            n_ret = len(completions) // len(prompts)
            outputs = [np.asarray(prompts[i // n_ret] + c, dtype=np.int32) for i, c in enumerate(completions)]
            if cfg.return_dict_in_generate:
                return GenerateOutput(outputs, scores_out or None, logits_out or None, sequence_scores.cpu())
            return outputs
        generated = seqs[:, P : P + n_run].cpu().numpy()
        eos_set = set(eos)
        outputs = []
        for i, prompt in enumerate(prompts):
            row = generated[i, : limits[i] - lengths[i]].tolist()
            for j, t in enumerate(row):
                if t in eos_set:
                    row = row[: j + 1]
                    break
            outputs.append(np.asarray(prompt + row, dtype=np.int32))
        if cfg.return_dict_in_generate:
            return GenerateOutput(outputs, scores_out or None, logits_out or None)
        return outputs

    def _full_step(self, seqs: torch.Tensor, pad: int) -> torch.Tensor:
        """use_past=False: run the whole sequence again; logits of the last position, (B, vocab)."""
        valid = seqs >= 0
        ids = seqs.clamp(min=0).masked_fill(~valid, pad)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        if self._max_positions():  # rows past their limit (their tokens are dropped) stay within the positions
            positions = positions.clamp(max=self._max_positions() - 1)
        inputs = self.prepare_inputs_for_generation(ids, position_ids=positions, attention_mask=valid.long())
        return self(**inputs)[:, -1].float()
