"""Decoding algorithms, written once against the model contract.

Nothing here knows which model family it drives: it calls ``encode``,
``init_state``, ``step`` and ``reorder`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from seq2seq.models.contract import Seq2SeqModel


@dataclass
class Hypothesis:
    """One decoded sentence.

    Attributes:
        tokens: output ids, without BOS and EOS.
        score: the sum of the tokens' log-probabilities (EOS included when produced).
        attention: ``[steps, src_len]`` weights, one row per decoding step (the EOS step
            included when EOS was produced), or None.
    """

    tokens: list[int]
    score: float
    attention: torch.Tensor | None = None


def max_lengths(src_mask: torch.Tensor, a: float, b: int) -> torch.Tensor:
    """The output length limit ``a * |src| + b`` per sentence (at least 1), ``[batch]``."""
    return (src_mask.sum(1).float() * a + b).floor().long().clamp(min=1)


@torch.no_grad()
def greedy(
    model: Seq2SeqModel,
    src: torch.Tensor,
    *,
    bos: int,
    eos: int,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    keep_attention: bool = False,
) -> list[Hypothesis]:
    """Batched greedy decoding; finished sentences leave the batch via ``reorder``.

    Args:
        model: any model implementing the contract.
        src: padded source ids ``[batch, src_len]``.
        bos, eos: the target's begin/end-of-sentence ids.
        max_len_a, max_len_b: the length limit ``a * |src| + b`` (source tokens, EOS included).
        keep_attention: also return each sentence's attention weights.

    Returns:
        One :class:`Hypothesis` per source row, in input order.
    """
    encoded = model.encode(src)
    state = model.init_state(encoded)
    limits = max_lengths(encoded.mask, max_len_a, max_len_b)
    if model.max_positions is not None:  # BOS takes the first position
        limits = limits.clamp(max=model.max_positions - 1)
    batch = src.size(0)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    scores = [0.0] * batch
    attn: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    active = torch.arange(batch, device=src.device)  # original row of each live row
    prev = torch.full((batch,), bos, dtype=torch.long, device=src.device)
    for t in range(int(limits.max())):
        log_probs, state, weights = model.step(prev, state)
        best, prev = log_probs.max(dim=-1)
        done = prev.eq(eos) | limits[active].le(t + 1)
        _record(
            active.tolist(),
            prev.tolist(),
            best.tolist(),
            eos,
            tokens,
            scores,
            attn if keep_attention else None,
            weights,
        )
        keep = (~done).nonzero().squeeze(1)
        if keep.numel() == 0:
            break
        if keep.numel() < active.numel():
            state, active, prev = model.reorder(state, keep), active[keep], prev[keep]
    return [
        Hypothesis(tokens[i], scores[i], torch.stack(attn[i]) if attn[i] else None)
        for i in range(batch)
    ]


def _record(rows, ids, logps, eos, tokens, scores, attn, weights) -> None:
    """Append one step's choice to each live row's hypothesis."""
    for j, row in enumerate(rows):
        scores[row] += logps[j]
        if ids[j] != eos:
            tokens[row].append(ids[j])
        if attn is not None and weights is not None:
            attn[row].append(weights[j].float().cpu())
