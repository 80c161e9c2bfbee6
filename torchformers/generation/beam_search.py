"""Beam search bookkeeping for `GenerationMixin.generate` with `num_beams > 1`.

Follows transformers' `GenerationMixin._beam_search` (generation/utils.py, the vectorised version that
replaced `BeamSearchScorer`), which MindFormers' `num_beams` / `length_penalty` / `early_stopping` /
`num_return_sequences` fields mean too: beam scores are sums of log-softmax scores; each step keeps the
top `max(2, 1 + n_eos) * num_beams` continuations over all beams of a prompt; a continuation that ends
in an eos id or reaches the length limit becomes a finished hypothesis scored
`sum_logprobs / generated_length ** length_penalty` (generated tokens, eos included) when it is among
the top `num_beams`; the best `num_beams` unfinished ones run on. `early_stopping` True stops once
`num_beams` hypotheses are finished, False stops when the best running beam at its current length can
no longer beat the worst finished one, "never" makes that check at the longest possible length when
`length_penalty > 0`.

This class is model-free: it takes the log-probabilities of each step and says which tokens come next
and from which beam row (the caller reorders its KV cache by that). Sequences are `(B, num_beams, T)`
tensors where -1 marks left padding and unwritten slots.
"""

from __future__ import annotations

import torch

__all__ = ["BeamSearch"]

_NEG = -1.0e9  # transformers' "impossible" score


def _gather(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` `(B, k)` of `tensor` `(B, n, ...)` along dim 1."""
    while index.dim() < tensor.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(tensor, index, dim=1)


class BeamSearch:
    """The running and finished beams of a batch of prompts.

    Args:
        prompts: `(B, T)` left-padded prompts (-1 for padding) followed by room for the new tokens (-1).
        prompt_width: P, the width of the prompt part (new tokens go at P, P + 1, ...).
        max_new: `(B,)` how many tokens each prompt may get (its length limit minus its length).
        num_beams, length_penalty, early_stopping: as in transformers' `GenerationConfig`.
        eos_token_ids: the ids that end a hypothesis.
    """

    def __init__(
        self,
        prompts: torch.Tensor,
        prompt_width: int,
        max_new: torch.Tensor,
        num_beams: int,
        length_penalty: float,
        early_stopping: bool | str,
        eos_token_ids: list[int],
    ) -> None:
        B, T = prompts.shape
        device = prompts.device
        self.B, self.nb, self.P = B, num_beams, prompt_width
        self.max_new = max_new.to(device)
        self.length_penalty = float(length_penalty)
        self.early_stopping = early_stopping
        self.eos = torch.tensor(eos_token_ids if eos_token_ids else [-2], device=device)
        self.k = max(2, 1 + len(eos_token_ids)) * num_beams
        self.top_mask = torch.arange(self.k, device=device) < num_beams
        self.running = prompts[:, None, :].expand(B, num_beams, T).clone()
        self.finished = self.running.clone()
        # only the first beam starts live, so the first step does not pick the same token num_beams times
        self.running_scores = torch.zeros(B, num_beams, device=device)
        self.running_scores[:, 1:] = _NEG
        self.finished_scores = torch.full((B, num_beams), _NEG, device=device)
        self.is_finished = torch.zeros(B, num_beams, dtype=torch.bool, device=device)
        self.improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
        self.offsets = torch.arange(B, device=device)[:, None] * num_beams
        self.step_count = 0

    def flat_running(self, width: int) -> torch.Tensor:
        """The running sequences `(B * num_beams, width)` (what logits processors see)."""
        return self.running[:, :, :width].reshape(self.B * self.nb, width)

    def step(self, log_probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Advance by one token given the processed log-probabilities `(B * num_beams, vocab)`.

        Returns the next token of each running beam `(B * num_beams,)`, the flat row each one continues
        (reorder the KV cache rows by it), and whether the search is over.
        """
        B, nb, step = self.B, self.nb, self.step_count
        cur = self.P + step
        vocab = log_probs.shape[-1]
        scores = (log_probs.view(B, nb, vocab) + self.running_scores[:, :, None]).reshape(B, nb * vocab)
        topk_scores, topk_idx = torch.topk(scores, k=self.k)
        source = topk_idx // vocab  # (B, K) beam each candidate extends
        tokens = topk_idx % vocab
        candidates = _gather(self.running, source)
        candidates[:, :, cur] = tokens
        at_limit = (self.max_new <= step + 1)[:, None]  # (B, 1)
        hits = torch.isin(tokens, self.eos) | at_limit  # (B, K) candidates that end here

        # the best num_beams candidates that do not end run on
        live_scores = topk_scores + hits.float() * _NEG
        keep = torch.topk(live_scores, k=nb).indices
        self.running = _gather(candidates, keep)
        self.running_scores = _gather(live_scores, keep)
        rows = (_gather(source, keep) + self.offsets).reshape(-1)

        # ending candidates among the top num_beams become finished hypotheses if they beat the current ones
        just_finished = hits & self.top_mask[None, :]
        hyp_scores = topk_scores / ((step + 1) ** self.length_penalty)
        full = self.is_finished.all(dim=-1, keepdim=True) & (self.early_stopping is True)
        hyp_scores = hyp_scores + full.float() * _NEG
        hyp_scores = hyp_scores + (~self.improvable).float() * _NEG
        hyp_scores = hyp_scores + (~just_finished).float() * _NEG
        merged_scores = torch.cat((self.finished_scores, hyp_scores), dim=1)
        best = torch.topk(merged_scores, k=nb).indices
        self.finished = _gather(torch.cat((self.finished, candidates), dim=1), best)
        self.finished_scores = _gather(merged_scores, best)
        self.is_finished = _gather(torch.cat((self.is_finished, just_finished), dim=1), best)

        # can a running beam still beat the worst finished hypothesis?
        self.step_count = step + 1
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            best_length = self.max_new[:, None].float()
        else:
            best_length = torch.full((B, 1), float(step + 1), device=scores.device)
        best_running = self.running_scores[:, :1] / (best_length**self.length_penalty)
        worst = self.finished_scores.min(dim=1, keepdim=True).values
        worst_finished = torch.where(self.is_finished, worst, torch.full_like(self.finished_scores, _NEG))
        self.improvable = self.improvable & (best_running > worst_finished).any(dim=-1, keepdim=True) & ~at_limit
        open_beams = not (bool(self.is_finished.all()) and self.early_stopping is True)
        done = not (bool(self.improvable.any()) and open_beams and not bool(hits.all()))
        return self.running[:, :, cur].reshape(-1), rows, done

    def best(self, num_return_sequences: int) -> tuple[list[list[int]], torch.Tensor]:
        """The best `num_return_sequences` hypotheses of each prompt, batch-major: their new tokens (up to
        and including the eos) and their scores."""
        tokens = self.finished[:, :num_return_sequences, self.P :].reshape(-1, self.finished.shape[-1] - self.P)
        out = []
        for row in tokens.cpu().tolist():
            end = row.index(-1) if -1 in row else len(row)
            out.append(row[:end])
        return out, self.finished_scores[:, :num_return_sequences].reshape(-1)
