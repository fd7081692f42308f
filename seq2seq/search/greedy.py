"""One token per sentence per step: greedy search and sampling.

Both run the same loop through the model contract and differ only in how the next
token is chosen from the (rule-constrained) log-probabilities. Finished sentences
leave the batch via ``reorder``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from seq2seq.models.contract import Decoder
from seq2seq.search.common import Hypothesis, Rules

Chooser = Callable[[torch.Tensor], torch.Tensor]  # log_probs [rows, vocab] -> ids [rows]


@torch.no_grad()
def greedy(model: Decoder, src: torch.Tensor, rules: Rules, *, keep_attention: bool = False):
    """Batched greedy decoding: the most probable token at every step.

    Args:
        model: any model implementing the decoding contract (or an ensemble).
        src: padded source ids ``[batch, src_len]``.
        rules: length limits and other constraints.
        keep_attention: also return each sentence's attention weights.

    Returns:
        One :class:`Hypothesis` per source row, in input order.
    """
    # max() rather than argmax(): the same ids, and several times faster on CPU.
    return _generate(model, src, rules, lambda lp: lp.max(dim=-1).indices, keep_attention)


@torch.no_grad()
def sample(
    model: Decoder,
    src: torch.Tensor,
    rules: Rules,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    keep_attention: bool = False,
) -> list[Hypothesis]:
    """Batched ancestral sampling from the temperature-scaled, truncated distribution.

    Args:
        temperature: divides the log-probabilities (< 1 sharpens, > 1 flattens).
        top_k: sample among the ``k`` most likely tokens only (0: all).
        top_p: sample from the smallest set of tokens whose probability reaches ``p``.
        generator: the random source; seed it for reproducible samples.

    Scores are the model's log-probabilities of the drawn tokens (before temperature),
    so ``top_k=1`` gives exactly greedy search's hypotheses.
    """

    def choose(log_probs: torch.Tensor) -> torch.Tensor:
        logits = truncate(log_probs.float() / temperature, top_k, top_p)
        probs = logits.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    return _generate(model, src, rules, choose, keep_attention)


def truncate(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits ``[rows, vocab]`` with everything outside the top-k / top-p set at -inf."""
    if 0 < top_k < logits.size(-1):  # exactly k survive, ties or not
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs
        drop = mass_before >= top_p  # the most likely token always stays (mass_before 0)
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def _generate(model: Decoder, src, rules: Rules, choose: Chooser, keep_attention: bool):
    encoded = model.encode(src)
    state = model.init_state(encoded, keep_attention)
    limits = rules.limits(encoded.mask.sum(1), model.max_positions)
    batch = src.size(0)
    out = _Outputs(batch, keep_attention)
    active = torch.arange(batch, device=src.device)  # original row of each live row
    prev = torch.full((batch,), rules.bos, dtype=torch.long, device=src.device)
    history = src.new_zeros(batch, 0) if rules.needs_history else None
    for t in range(int(limits.max())):
        log_probs, state, weights = model.step(prev, state)
        rules.apply(log_probs, t, history)
        prev = choose(log_probs)
        chosen = log_probs.gather(1, prev[:, None]).float()
        out.record(active.tolist(), prev.tolist(), chosen, weights)
        if history is not None:
            history = torch.cat([history, prev[:, None]], dim=1)
        done = prev.eq(rules.eos) | limits[active].le(t + 1)
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        if keep.numel() < active.numel():
            state, active, prev = model.reorder(state, keep), active[keep], prev[keep]
            history = history[keep] if history is not None else None
    return out.hypotheses(rules.eos)


class _Outputs:
    """Tokens, scores and attention of every sentence, filled step by step."""

    def __init__(self, batch: int, keep_attention: bool):
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.scores = [0.0] * batch
        self.attn: list[list[torch.Tensor]] | None = (
            [[] for _ in range(batch)] if keep_attention else None
        )

    def record(self, rows, ids, logps: torch.Tensor, weights) -> None:
        for j, (row, logp) in enumerate(zip(rows, logps.squeeze(1).tolist(), strict=True)):
            self.scores[row] += logp
            self.tokens[row].append(ids[j])
            if self.attn is not None and weights is not None:
                self.attn[row].append(weights[j].float().cpu())

    def hypotheses(self, eos: int) -> list[Hypothesis]:
        result = []
        for i, tokens in enumerate(self.tokens):
            if tokens and tokens[-1] == eos:
                tokens = tokens[:-1]
            attn = torch.stack(self.attn[i]) if self.attn and self.attn[i] else None
            result.append(Hypothesis(tokens, self.scores[i], self.scores[i], attn))
        return result
