"""Logits processors and warpers (MindFormers `mindformers/generation/logits_process.py`, after HF's).

All work on torch tensors `(B, vocab)` without reading values back to the host, so a generation loop
on a GPU does not stall on them.
"""

from __future__ import annotations

import torch

__all__ = [
    "LogitsProcessor",
    "LogitsProcessorList",
    "MinLengthLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "sample_from_logits",
]


class LogitsProcessor:
    """`processor(input_ids (B, cur_len), scores (B, vocab)) -> scores`."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class LogitsProcessorList(list):
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


class TemperatureLogitsWarper(LogitsProcessor):
    def __init__(self, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be a positive float, got {temperature!r}")
        self.temperature = float(temperature)

    def __call__(self, input_ids, scores):
        return scores / self.temperature


class RepetitionPenaltyLogitsProcessor(LogitsProcessor):
    """Divide positive / multiply negative scores of tokens already in `input_ids` by `penalty`.

    Entries < 0 in `input_ids` (left padding) are ignored.
    """

    def __init__(self, penalty: float) -> None:
        if not penalty > 0:
            raise ValueError(f"repetition_penalty must be a positive float, got {penalty!r}")
        self.penalty = float(penalty)

    def __call__(self, input_ids, scores):
        seen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, input_ids.clamp(min=0), input_ids >= 0)
        penalised = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return torch.where(seen, penalised, scores)


class TopKLogitsWarper(LogitsProcessor):
    def __init__(self, top_k: int, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1) -> None:
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        self.top_k, self.filter_value = max(top_k, min_tokens_to_keep), filter_value

    def __call__(self, input_ids, scores):
        k = min(self.top_k, scores.shape[-1])
        kth = torch.topk(scores, k, dim=-1).values[..., -1:]
        return scores.masked_fill(scores < kth, self.filter_value)


class TopPLogitsWarper(LogitsProcessor):
    def __init__(self, top_p: float, filter_value: float = -float("inf"), min_tokens_to_keep: int = 1) -> None:
        if not 0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        self.top_p, self.filter_value, self.min_tokens_to_keep = float(top_p), filter_value, min_tokens_to_keep

    def __call__(self, input_ids, scores):
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - self.top_p)
        remove[..., -self.min_tokens_to_keep :] = False
        return scores.masked_fill(remove.scatter(1, sorted_idx, remove), self.filter_value)


class MinLengthLogitsProcessor(LogitsProcessor):
    """Forbid every eos id while a row is shorter than its minimum (`min_lengths` (B,) per row).

    A row's length is its number of entries >= 0 in `input_ids` (left padding is -1).
    """

    def __init__(self, min_lengths: torch.Tensor, eos_token_ids: list[int]) -> None:
        self.min_lengths = min_lengths
        self.eos = torch.tensor(eos_token_ids, dtype=torch.long, device=min_lengths.device)

    def __call__(self, input_ids, scores):
        too_short = ((input_ids >= 0).sum(dim=1) < self.min_lengths).unsqueeze(1)  # (B, 1)
        is_eos = torch.zeros(scores.shape[-1], dtype=torch.bool, device=scores.device)
        is_eos[self.eos] = True
        return scores.masked_fill(too_short & is_eos, -float("inf"))


def sample_from_logits(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token `(B,)`: argmax, or a draw from softmax(scores) by the exponential-race trick
    (argmax of p / Exp(1), as gpt-fast does; no host synchronisation, unlike `torch.multinomial`)."""
    if not do_sample:
        return scores.argmax(dim=-1)
    probs = scores.float().softmax(dim=-1)
    race = torch.empty_like(probs).exponential_(1, generator=generator)
    return (probs / race).argmax(dim=-1)
