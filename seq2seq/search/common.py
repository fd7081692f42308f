"""What every search shares: the output type and the rules it obeys besides the model.

Greedy search, sampling and beam search all call :meth:`Rules.apply` on each step's
log-probabilities, so a constraint (length limits, banned tokens, repeats) means the
same thing whichever search runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    """One decoded sentence.

    Attributes:
        tokens: output ids, without BOS and EOS.
        score: what the search ranked by: ``log_prob``, divided by the length penalty
            for beam search with ``alpha > 0``.
        log_prob: the sum of the tokens' log-probabilities (EOS included when produced).
        attention: ``[steps, src_len]`` weights, one row per decoding step (the EOS step
            included when EOS was produced), or None.
    """

    tokens: list[int]
    score: float
    log_prob: float
    attention: torch.Tensor | None = None


@dataclass(frozen=True)
class Rules:
    """Search constraints.

    Attributes:
        bos, eos: the target's begin/end-of-sentence ids.
        max_len_a, max_len_b: at most ``a * |src| + b`` output tokens (EOS included).
        min_len: EOS is forbidden before this many output tokens.
        no_repeat_ngram: no n-gram of this size occurs twice in an output (0: off).
        banned: ids never produced (padding and BOS, say).
    """

    bos: int
    eos: int
    max_len_a: float = 1.5
    max_len_b: int = 10
    min_len: int = 0
    no_repeat_ngram: int = 0
    banned: tuple[int, ...] = ()

    def limits(self, src_lengths: torch.Tensor, max_positions: int | None) -> torch.Tensor:
        """Each sentence's output length limit (at least 1) from its source length
        (EOS included), ``[batch]``.

        A model with ``max_positions`` produces at most that many tokens (its inputs are
        BOS and all but the last output).
        """
        limits = (src_lengths.float() * self.max_len_a + self.max_len_b).floor().long()
        if max_positions is not None:
            limits = limits.clamp(max=max_positions)
        return limits.clamp(min=1)

    def apply(self, log_probs: torch.Tensor, t: int, history: torch.Tensor | None) -> None:
        """Set forbidden continuations at step ``t`` (0-based) to -inf, in place.

        Args:
            log_probs: ``[rows, vocab]`` for the next token.
            t: tokens produced so far.
            history: ``[rows, t]`` those tokens (used by ``no_repeat_ngram`` only, so it
                may be None when :attr:`needs_history` is False).
        """
        if self.banned:
            log_probs[:, list(self.banned)] = NEG_INF
        if t < self.min_len:
            eos = log_probs[:, self.eos].clone()
            log_probs[:, self.eos] = NEG_INF
        if self.no_repeat_ngram and history is not None:
            _ban_repeats(log_probs, history, self.no_repeat_ngram)
        if t < self.min_len or self.no_repeat_ngram:
            # A row left without any allowed token may still end (rather than emit padding).
            stuck = log_probs.max(dim=-1).values.isneginf()
            if bool(stuck.any()):
                log_probs[stuck, self.eos] = eos[stuck] if t < self.min_len else 0.0

    @property
    def needs_history(self) -> bool:
        return self.no_repeat_ngram > 0


def _ban_repeats(log_probs: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """Forbid each token that would complete an n-gram already in the row's history."""
    t = history.size(1)
    if t < n:  # no complete n-gram yet
        return
    grams = history.unfold(1, n, 1)  # [rows, t - n + 1, n]
    prefix = history[:, t - n + 1 :]  # the last n - 1 tokens
    seen = grams[:, :, : n - 1].eq(prefix.unsqueeze(1)).all(-1)  # [rows, grams]
    hits = torch.zeros_like(log_probs)
    hits.scatter_add_(1, grams[:, :, -1], seen.to(hits.dtype))
    log_probs.masked_fill_(hits > 0, NEG_INF)
