"""Beam search, written once against the decoding contract.

Every sentence of a batch keeps ``k`` live hypotheses; their rows are flattened to
``[sentences * k]`` for the model. Each step is a few named parts:

1. **expand**: one model step for every live row, constrained by the :class:`Rules`;
2. **score**: add each row's running log-probability and take the ``2k`` best
   continuations per sentence;
3. **finalize**: continuations among the ``k`` best that end the sentence (EOS, or the
   length limit) become finished hypotheses, scored with the GNMT length penalty
   ``((5 + length) / 6) ** alpha``;
4. **select**: the ``k`` best continuations that do not end become the new beam;
5. **reorder**: sentences that are done leave the batch, and the model state follows
   the selected rows (one ``reorder`` per step).

A sentence is done when ``k`` of its hypotheses have finished and its best live one,
ended now, would not beat the ``k``-th of them (exact without length penalty), or at
its length limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from seq2seq.models.contract import Decoder
from seq2seq.search.common import NEG_INF, Hypothesis, Rules


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's length normaliser ``((5 + length) / 6) ** alpha`` (1 when alpha is 0)."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class _Beams:
    """The live sentences of a batch, ``k`` hypotheses each (rows ``l * k + j``)."""

    sentences: list[int]  # original batch row of each live sentence
    limits: torch.Tensor  # [L] output length limits
    scores: torch.Tensor  # [L, k] summed log-probabilities; -inf marks an empty slot
    tokens: torch.Tensor  # [L * k, t] tokens so far
    attention: torch.Tensor | None  # [L * k, t, src_len] when attention is kept
    state: Any  # the model's decoder state, one row per hypothesis


@dataclass
class _Candidates:
    """The ``2k`` best continuations of each live sentence, best first."""

    scores: torch.Tensor  # [L, 2k] summed log-probabilities
    beam: torch.Tensor  # [L, 2k] which hypothesis (0..k-1) each continues
    token: torch.Tensor  # [L, 2k] the token appended
    ending: torch.Tensor  # [L, 2k] True where the continuation ends the sentence


class _Finished:
    """Finished hypotheses of every sentence, with the score a live one must beat."""

    def __init__(self, batch: int, n_best: int, beam_size: int):
        self.lists: list[list[Hypothesis]] = [[] for _ in range(batch)]
        self.thresholds = [NEG_INF] * batch  # the beam_size-th best score so far
        self.n_best, self.beam_size = n_best, beam_size

    def add(self, sentence: int, hyp: Hypothesis) -> None:
        found = self.lists[sentence]
        found.append(hyp)
        if len(found) >= self.beam_size:
            scores = sorted((h.score for h in found), reverse=True)
            self.thresholds[sentence] = scores[self.beam_size - 1]

    def best(self) -> list[list[Hypothesis]]:
        return [sorted(f, key=lambda h: h.score, reverse=True)[: self.n_best] for f in self.lists]


@torch.no_grad()
def beam_search(
    model: Decoder,
    src: torch.Tensor,
    rules: Rules,
    *,
    beam_size: int = 5,
    n_best: int = 1,
    alpha: float = 1.0,
    keep_attention: bool = False,
) -> list[list[Hypothesis]]:
    """Batched beam search.

    Args:
        model: any model implementing the decoding contract (or an ensemble).
        src: padded source ids ``[batch, src_len]``.
        rules: length limits and other constraints.
        beam_size: live hypotheses per sentence (``k``).
        n_best: hypotheses returned per sentence (at most ``beam_size``).
        alpha: GNMT length-penalty exponent; 0 ranks by summed log-probability.
        keep_attention: also return each hypothesis' attention weights.

    Returns:
        Per source row, in input order, its ``n_best`` hypotheses, best first.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best={n_best} must be between 1 and beam_size={beam_size}")
    beams = _start(model, src, rules, beam_size, keep_attention)
    finished = _Finished(src.size(0), n_best, beam_size)
    prev = torch.full((src.size(0) * beam_size,), rules.bos, dtype=torch.long, device=src.device)
    for t in range(int(beams.limits.max())):
        log_probs, state, weights = model.step(prev, beams.state)
        rules.apply(log_probs, t, beams.tokens if rules.needs_history else None)
        cands = _score(beams, log_probs, rules, t)
        _finalize(beams, cands, weights, finished, rules.eos, t, alpha)
        beams = _select_and_reorder(model, beams, cands, state, weights, finished, t, alpha)
        if not beams.sentences:
            break
        prev = beams.tokens[:, -1]
    return finished.best()


def _start(model: Decoder, src, rules: Rules, k: int, keep_attention: bool) -> _Beams:
    encoded = model.encode(src)
    batch = src.size(0)
    state = model.reorder(
        model.init_state(encoded, keep_attention),
        torch.arange(batch, device=src.device).repeat_interleave(k),
    )
    scores = torch.full((batch, k), NEG_INF, device=src.device)
    scores[:, 0] = 0.0  # one live hypothesis per sentence at first
    attention = None
    if keep_attention:
        attention = torch.zeros(batch * k, 0, src.size(1), device=src.device)
    return _Beams(
        sentences=list(range(batch)),
        limits=rules.limits(encoded.mask.sum(1), model.max_positions),
        scores=scores,
        tokens=src.new_zeros(batch * k, 0),
        attention=attention,
        state=state,
    )


_BLOCK = 64  # vocabulary entries per block when scoring (a vector-friendly width)


def _score(beams: _Beams, log_probs: torch.Tensor, rules: Rules, t: int) -> _Candidates:
    """The 2k best continuations per sentence of the expanded beam.

    The vocabulary is cut into blocks of 64 entries, and a sentence's 2k best
    continuations lie in its 2k blocks with the best maximum plus running score: a
    continuation outside them is beaten by those 2k maxima. So the whole vocabulary is
    read once, for the block maxima, and only ``2k`` blocks per sentence are ranked
    entry by entry (``topk`` over every row costs several times more). When 64 does not
    divide the vocabulary, the last block is its last 64 entries, owning only those
    past the whole blocks: its maximum is over those, and its others are left out.
    """
    live, k = beams.scores.shape
    rows, vocab = log_probs.shape
    size = min(_BLOCK, vocab)
    whole, rest = divmod(vocab, size)
    maxima = log_probs[:, : whole * size].view(rows, whole, size).amax(-1)
    if rest:
        maxima = torch.cat([maxima, log_probs[:, whole * size :].amax(-1, keepdim=True)], 1)
    per_row = maxima.size(1)
    running = beams.scores.view(-1, 1)  # [live * k, 1]
    best = (maxima.float() + running).view(live, k * per_row)
    picked = best.topk(min(2 * k, k * per_row), dim=1).indices  # [live, <= 2k]
    row = picked.div(per_row, rounding_mode="floor") + k * torch.arange(
        live, device=picked.device
    ).unsqueeze(1)  # rows l * k + j
    block = picked % per_row
    start = (block * size).clamp(max=vocab - size)  # the last block may start earlier
    offset = torch.arange(size, device=picked.device)
    values = log_probs.reshape(-1)[(row * vocab + start).unsqueeze(-1) + offset].float()
    if rest:  # entries of the last block that belong to the one before it
        values.masked_fill_(block.eq(whole).unsqueeze(-1) & offset.lt(size - rest), NEG_INF)
    values = (values + running.view(-1)[row].unsqueeze(-1)).flatten(1)
    scores, index = values.topk(min(2 * k, values.size(1)), dim=1)
    which = index.div(size, rounding_mode="floor")  # [live, 2k] among the picked blocks
    token = start.gather(1, which) + index % size
    ending = token.eq(rules.eos) | beams.limits.le(t + 1).unsqueeze(1)
    return _Candidates(scores, row.gather(1, which) % k, token, ending)


def _finalize(beams, cands: _Candidates, weights, finished: _Finished, eos, t, alpha) -> None:
    """Continuations among the k best that end the sentence become finished hypotheses."""
    k = beams.scores.size(1)
    ends = cands.ending[:, :k] & cands.scores[:, :k].isfinite()
    found = ends.nonzero()
    if found.numel() == 0:
        return
    lives, js = found[:, 0], found[:, 1]
    rows = lives * k + cands.beam[lives, js]
    histories = beams.tokens[rows].tolist()  # one transfer for all, not one per hypothesis
    penalty = length_penalty(t + 1, alpha)
    for i, (live, row, token, log_prob) in enumerate(
        zip(
            lives.tolist(),
            rows.tolist(),
            cands.token[lives, js].tolist(),
            cands.scores[lives, js].tolist(),
            strict=True,
        )
    ):
        tokens = histories[i] + ([] if token == eos else [token])
        attention = None
        if beams.attention is not None and weights is not None:
            attention = torch.cat([beams.attention[row], weights[row].float().unsqueeze(0)])
        finished.add(
            beams.sentences[live], Hypothesis(tokens, log_prob / penalty, log_prob, attention)
        )


def _select_and_reorder(
    model: Decoder, beams: _Beams, cands: _Candidates, state, weights, finished: _Finished, t, alpha
) -> _Beams:
    """The k best non-ending continuations become the beam; done sentences leave it."""
    live, k = beams.scores.shape
    width = cands.scores.size(1)
    rank = cands.ending.long() * width + torch.arange(width, device=cands.scores.device)
    order = rank.argsort(dim=1)[:, :k]  # non-ending continuations first, best first
    scores = cands.scores.gather(1, order).masked_fill(cands.ending.gather(1, order), NEG_INF)
    beam, token = cands.beam.gather(1, order), cands.token.gather(1, order)
    keep = _undone(beams, scores, finished, t, alpha)
    if keep.numel() < live:
        scores, beam, token = scores[keep], beam[keep], token[keep]
    rows = (keep.unsqueeze(1) * k + beam).view(-1)
    attention = beams.attention
    if attention is not None and weights is not None:
        attention = torch.cat([attention[rows], weights[rows].float().unsqueeze(1)], dim=1)
    return _Beams(
        sentences=[beams.sentences[i] for i in keep.tolist()],
        limits=beams.limits[keep],
        scores=scores,
        tokens=torch.cat([beams.tokens[rows], token.view(-1, 1)], dim=1),
        attention=attention,
        state=model.reorder(state, rows),
    )


def _undone(beams: _Beams, scores: torch.Tensor, finished: _Finished, t, alpha) -> torch.Tensor:
    """Indices of the live sentences that go on after step ``t``."""
    best_live = scores.max(dim=1).values / length_penalty(t + 1, alpha)
    threshold = torch.tensor(
        [finished.thresholds[s] for s in beams.sentences], device=scores.device
    )
    done = beams.limits.le(t + 1) | best_live.le(threshold) | best_live.isneginf()
    return (~done).nonzero().squeeze(1)
