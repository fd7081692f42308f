"""Lexically constrained beam search: every output contains every given phrase.

Dynamic beam allocation (Post & Vilar 2018) with a vectorised constraint state (Hu et
al. 2019), written against the decoding contract like :mod:`seq2seq.search.beam`,
whose steps it shares (start, finalize, select and reorder). What differs:

1. **expand**: each live hypothesis proposes its ``2k`` best tokens, plus the first
   token of every constraint it has not met and the next token of the one it is in
   the middle of, so that a constraint can always be entered or continued;
2. **track**: every candidate's constraint state follows from its hypothesis's state
   and the token (a phrase is met once all its tokens came one after the other; any
   other token restarts the phrase it was in), and its *bank* is the number of
   constraint tokens it has met;
3. **allocate**: the ``k`` places of a sentence's beam are shared among the banks
   ``0..T`` (``T``: its constraint tokens), the best of each bank first, places a bank
   cannot fill going to the best remaining candidates, so that hypotheses that have
   met more constraints survive next to more probable ones that met fewer.

EOS is allowed once every constraint is met, and a candidate that could no longer fit
its unmet constraint tokens before the length limit is dropped, so every finished
hypothesis contains every phrase.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seq2seq.models.contract import Decoder
from seq2seq.search.beam import (
    _Beams,
    _Candidates,
    _finalize,
    _Finished,
    _select_and_reorder,
    _start,
)
from seq2seq.search.common import NEG_INF, Hypothesis, Rules

Phrases = list[list[int]]  # one sentence's constraints, each a list of target ids


class _Tracker:
    """Each live hypothesis's constraint state, and the candidates' next one.

    Per sentence (original batch row): ``tokens [B, C, P]`` its phrases padded with -1,
    ``lengths [B, C]`` (0 for padding, which counts as met), ``total [B]``. Per live
    hypothesis row: ``met [R, C]``, the phrase in progress ``doing [R]`` (-1: none) and
    how many of its tokens came already ``done [R]``.
    """

    def __init__(self, phrases: list[Phrases], k: int, device: torch.device) -> None:
        batch = len(phrases)
        width = max(1, max(len(p) for p in phrases))
        longest = max(1, max((len(c) for p in phrases for c in p), default=1))
        self.tokens = torch.full((batch, width, longest), -1, dtype=torch.long)
        self.lengths = torch.zeros(batch, width, dtype=torch.long)
        for b, sentence in enumerate(phrases):
            for c, phrase in enumerate(sentence):
                self.tokens[b, c, : len(phrase)] = torch.tensor(phrase)
                self.lengths[b, c] = len(phrase)
        self.tokens, self.lengths = self.tokens.to(device), self.lengths.to(device)
        self.total = self.lengths.sum(1)
        rows = batch * k
        self.met = self.lengths.eq(0).repeat_interleave(k, 0)  # [R, C]
        self.doing = torch.full((rows,), -1, dtype=torch.long, device=device)
        self.done = torch.zeros(rows, dtype=torch.long, device=device)

    def candidates(
        self, beams: _Beams, log_probs: torch.Tensor, rules: Rules, t: int
    ) -> tuple[_Candidates, _Candidates, tuple[torch.Tensor, ...]]:
        """The candidates to finalize (``k`` per sentence, allocated over all), the next
        beam's (``k``, allocated over those that do not end), and the beam's states."""
        live, k = beams.scores.shape
        rows = live * k
        sentence = torch.tensor(beams.sentences, device=log_probs.device).repeat_interleave(k)
        tokens, lengths, total = self.tokens[sentence], self.lengths[sentence], self.total[sentence]
        firsts = tokens[:, :, 0]  # [R, C]
        index = torch.arange(rows, device=log_probs.device)
        doing = self.doing.ge(0)
        following = torch.where(doing, tokens[index, self.doing.clamp(min=0), self.done], -1)
        c_index = torch.arange(tokens.size(1), device=log_probs.device)
        entering = torch.where(~self.met & c_index.ne(self.doing.unsqueeze(1)), firsts, -1)
        best = log_probs.topk(min(2 * k, log_probs.size(1)), dim=1).indices
        cand = torch.cat([best, entering, following.unsqueeze(1)], dim=1)  # [R, M]
        width = cand.size(1)
        earlier = torch.ones(width, width, dtype=torch.bool, device=cand.device).tril(-1)
        repeated = (cand.unsqueeze(2).eq(cand.unsqueeze(1)) & earlier).any(-1)
        valid = cand.ge(0) & ~repeated
        scores = beams.scores.view(-1, 1) + log_probs.gather(1, cand.clamp(min=0)).float()
        # the constraint state after each candidate
        goes_on = doing.unsqueeze(1) & cand.eq(following.unsqueeze(1))  # [R, M]
        doing_length = lengths.gather(1, self.doing.clamp(min=0).unsqueeze(1))  # [R, 1]
        finishes = goes_on & (self.done + 1).unsqueeze(1).eq(doing_length)
        match = ~self.met.unsqueeze(1) & firsts.unsqueeze(1).eq(cand.unsqueeze(2))  # [R, M, C]
        enters = ~goes_on & match.any(-1)
        entered = match.long().argmax(-1)  # the first phrase it starts
        entered_length = lengths.gather(1, entered)
        one_token = enters & entered_length.eq(1)
        met = self.met.unsqueeze(1).expand(-1, width, -1).clone()
        c_count = tokens.size(1)
        met |= finishes.unsqueeze(2) & F.one_hot(self.doing.clamp(min=0), c_count).bool().unsqueeze(
            1
        )
        met |= one_token.unsqueeze(2) & F.one_hot(entered, c_count).bool()
        middle = goes_on & ~finishes
        starts = enters & ~one_token
        new_doing = torch.where(middle, self.doing.unsqueeze(1), torch.where(starts, entered, -1))
        new_done = torch.where(middle, (self.done + 1).unsqueeze(1), starts.long())
        bank = (met.long() * lengths.unsqueeze(1)).sum(-1) + new_done  # tokens met
        unmet = total.unsqueeze(1) - bank
        limits = beams.limits.repeat_interleave(k).unsqueeze(1)
        is_eos = cand.eq(rules.eos)
        ok = valid & ~(is_eos & unmet.gt(0)) & unmet.le(limits - (t + 1))
        scores = scores.masked_fill(~ok, NEG_INF)
        ending = is_eos | limits.le(t + 1)

        def per_sentence(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(live, k * width, *x.shape[2:])

        # (a slot without a candidate carries a harmless token: it is never read)
        flat = [per_sentence(x) for x in (scores, bank, ending, cand.clamp(min=0))]
        s_scores, s_bank, s_ending, s_token = flat
        source = torch.arange(k * width, device=cand.device).div(width, rounding_mode="floor")
        source = source.expand(live, -1)
        banks = self.total[torch.tensor(beams.sentences, device=cand.device)] + 1
        picked = _allocate(s_scores, s_bank, banks, k)
        to_finish = _gathered(picked, s_scores, source, s_token, s_ending)
        going = _allocate(s_scores.masked_fill(s_ending, NEG_INF), s_bank, banks, k)
        to_keep = _gathered(going, s_scores.masked_fill(s_ending, NEG_INF), source, s_token, None)
        states = tuple(
            per_sentence(x).gather(
                1, going.view(live, k, *([1] * (x.dim() - 2))).expand(live, k, *x.shape[2:])
            )
            for x in (met, new_doing, new_done)
        )
        return to_finish, to_keep, states

    def follow(self, states: tuple[torch.Tensor, ...], keep: list[int]) -> None:
        """Take the new beam's states, for the sentences that go on."""
        met, doing, done = (s[keep] for s in states)
        self.met = met.reshape(-1, met.size(-1))
        self.doing, self.done = doing.reshape(-1), done.reshape(-1)


def _allocate(
    scores: torch.Tensor, bank: torch.Tensor, banks: torch.Tensor, k: int
) -> torch.Tensor:
    """Indices of the ``k`` candidates of each sentence that dynamic beam allocation
    keeps, best first: ``k // banks`` places per bank (the remainder to the banks that
    met most), each bank's best first, then the best of the rest for unfilled places.

    Args:
        scores: ``[L, N]`` candidate scores (-inf: not a candidate).
        bank: ``[L, N]`` each candidate's bank (constraint tokens met).
        banks: ``[L]`` how many banks each sentence has (its constraint tokens + 1).
    """
    order = scores.argsort(dim=1, descending=True, stable=True)
    s, b = scores.gather(1, order), bank.gather(1, order)
    real = s.isfinite()
    seen = F.one_hot(b, int(banks.max())) * real.unsqueeze(2)  # [L, N, banks]
    rank = (seen.cumsum(1) * seen).sum(-1) - 1  # place of each candidate within its bank
    base, extra = k // banks, k % banks
    from_top = banks.unsqueeze(1) - 1 - b  # 0 for the bank that met every constraint
    quota = base.unsqueeze(1) + from_top.lt(extra.unsqueeze(1)).long()
    chosen = real & rank.lt(quota)
    tier = torch.where(chosen, 0, torch.where(real, 1, 2))
    keep = tier.argsort(dim=1, stable=True)[:, :k]
    picked = order.gather(1, keep)
    return picked[
        torch.arange(picked.size(0)).unsqueeze(1),
        scores.gather(1, picked).argsort(dim=1, descending=True, stable=True),
    ]


def _gathered(
    picked: torch.Tensor,
    scores: torch.Tensor,
    source: torch.Tensor,
    token: torch.Tensor,
    ending: torch.Tensor | None,
) -> _Candidates:
    ends = (
        ending.gather(1, picked)
        if ending is not None
        else torch.zeros_like(picked, dtype=torch.bool)
    )
    return _Candidates(
        scores.gather(1, picked), source.gather(1, picked), token.gather(1, picked), ends
    )


@torch.no_grad()
def constrained_beam_search(
    model: Decoder,
    src: torch.Tensor,
    rules: Rules,
    phrases: list[Phrases],
    *,
    beam_size: int = 5,
    n_best: int = 1,
    alpha: float = 1.0,
    keep_attention: bool = False,
) -> list[list[Hypothesis]]:
    """Beam search whose every output contains every phrase of its sentence.

    Args:
        model, src, rules, beam_size, n_best, alpha, keep_attention: as for
            :func:`~seq2seq.search.beam.beam_search`.
        phrases: per source row, the phrases (lists of target ids, none empty) that its
            outputs must contain; an empty list leaves the row unconstrained.

    Returns:
        Per source row, in input order, its ``n_best`` hypotheses, best first.

    Raises:
        ValueError: a row's phrases have more tokens than its output length limit, an
            empty phrase, or a phrase list per row that does not match ``src``.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best={n_best} must be between 1 and beam_size={beam_size}")
    if len(phrases) != src.size(0):
        raise ValueError(f"{len(phrases)} constraint lists for {src.size(0)} sources")
    if any(not phrase for row in phrases for phrase in row):
        raise ValueError("an empty constraint: every phrase needs at least one token")
    beams = _start(model, src, rules, beam_size, keep_attention)
    for row, (sentence, limit) in enumerate(zip(phrases, beams.limits.tolist(), strict=True)):
        needed = sum(len(p) for p in sentence)
        if needed > limit:
            raise ValueError(
                f"source {row + 1}: its constraints need {needed} output tokens, but its "
                f"output may have at most {limit} (raise decode.max_len_b or max_len_a)"
            )
    tracker = _Tracker(phrases, beam_size, src.device)
    finished = _Finished(src.size(0), n_best, beam_size)
    prev = torch.full((src.size(0) * beam_size,), rules.bos, dtype=torch.long, device=src.device)
    for t in range(int(beams.limits.max())):
        log_probs, state, weights = model.step(prev, beams.state)
        rules.apply(log_probs, t, beams.tokens if rules.needs_history else None)
        to_finish, to_keep, states = tracker.candidates(beams, log_probs, rules, t)
        _finalize(beams, to_finish, weights, finished, rules.eos, t, alpha)
        before = beams.sentences
        beams = _select_and_reorder(model, beams, to_keep, state, weights, finished, t, alpha)
        tracker.follow(states, [before.index(s) for s in beams.sentences])
        if not beams.sentences:
            break
        prev = beams.tokens[:, -1]
    return finished.best()
