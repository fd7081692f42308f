"""Lexically constrained beam search: every output contains every given phrase.

Dynamic beam allocation (Post & Vilar 2018) with a vectorised constraint state (Hu et
al. 2019), written against the decoding contract like :mod:`seq2seq.search.beam`,
whose steps it shares (start, finalize, select and reorder). What differs:

1. **expand**: each live hypothesis proposes its ``2k`` best tokens, plus the next
   token of every phrase it has not met (and the first, to start it over), so that a
   phrase can always be entered or continued;
2. **track**: every phrase is matched on its own by a KMP automaton over the output,
   so phrases may overlap and a repeated prefix is never lost; a candidate's *bank* is
   the number of constraint tokens it has met (the met phrases, plus the longest
   progress into an unmet one);
3. **allocate**: the ``k`` places of a sentence's beam are shared among the banks
   ``0..T`` (``T``: its constraint tokens), the best of each bank first, places a bank
   cannot fill going to the best remaining candidates, so that hypotheses that have
   met more constraints survive next to more probable ones that met fewer.

EOS is allowed once every phrase is met, and a candidate that could no longer fit its
unmet phrases before the length limit is dropped, so every finished hypothesis
contains every phrase (a phrase given twice, or inside another, needs no occurrence of
its own). That room is counted as if the unmet phrases did not overlap: an output that
fits the limit only by overlapping them is not found, and phrases longer in all than
the limit are refused up front.
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


def _failure(phrase: list[int]) -> list[int]:
    """KMP's failure function: ``f[q]`` is the length of the longest proper prefix of
    ``phrase[:q]`` that is also its suffix (where matching resumes after a mismatch)."""
    f = [0] * (len(phrase) + 1)
    k = 0
    for q in range(1, len(phrase)):
        while k and phrase[q] != phrase[k]:
            k = f[k]
        k += phrase[q] == phrase[k]
        f[q + 1] = k
    return f


class _Tracker:
    """How far each live hypothesis is into each phrase, and the candidates' next state.

    Every phrase is matched on its own, as a KMP automaton over the output so far: its
    *progress* is the length of the longest prefix of the phrase that ends the output
    (the phrase's length once it occurred anywhere: met, for good). Several phrases
    progress at once, so phrases may overlap ("a b" and "b c" are both in "a b c").

    Per sentence (original batch row): ``tokens [B, C, P]`` its phrases padded with -1,
    ``fail [B, C, P + 1]`` their failure functions, ``lengths [B, C]`` (0 for padding,
    which counts as met). Per live hypothesis row: ``progress [R, C]``.
    """

    def __init__(self, phrases: list[Phrases], k: int, device: torch.device) -> None:
        batch = len(phrases)
        width = max(1, max(len(p) for p in phrases))
        longest = max(1, max((len(c) for p in phrases for c in p), default=1))
        tokens = torch.full((batch, width, longest), -1, dtype=torch.long)
        fail = torch.zeros(batch, width, longest + 1, dtype=torch.long)
        lengths = torch.zeros(batch, width, dtype=torch.long)
        for b, sentence in enumerate(phrases):
            for c, phrase in enumerate(sentence):
                tokens[b, c, : len(phrase)] = torch.tensor(phrase)
                fail[b, c, : len(phrase) + 1] = torch.tensor(_failure(phrase))
                lengths[b, c] = len(phrase)
        self.tokens, self.fail = tokens.to(device), fail.to(device)
        self.lengths = lengths.to(device)
        self.total = self.lengths.sum(1)
        self.progress = torch.zeros(batch * k, width, dtype=torch.long, device=device)

    def _advance(self, tokens, fail, lengths, cand) -> torch.Tensor:
        """Every phrase's progress after each candidate token: ``[R, M, C]``."""
        rows, width = cand.shape
        phrases, longest = tokens.size(1), tokens.size(2)
        shape = (rows, width, phrases, longest)
        tokens = tokens.unsqueeze(1).expand(*shape)
        fail = fail.unsqueeze(1).expand(rows, width, phrases, longest + 1)
        q = self.progress.unsqueeze(1).expand(rows, width, phrases)
        met = q.eq(lengths.unsqueeze(1))
        x = cand.unsqueeze(2)

        def at(q: torch.Tensor) -> torch.Tensor:  # the phrase's token at position q
            return tokens.gather(3, q.clamp(max=longest - 1).unsqueeze(3)).squeeze(3)

        for _ in range(longest):  # follow failure links while the token does not match
            back = q.gt(0) & at(q).ne(x)
            q = torch.where(back, fail.gather(3, q.unsqueeze(3)).squeeze(3), q)
        q = q + at(q).eq(x).long()
        return torch.where(met, lengths.unsqueeze(1), q)

    def candidates(
        self, beams: _Beams, log_probs: torch.Tensor, rules: Rules, t: int
    ) -> tuple[_Candidates, _Candidates, torch.Tensor]:
        """The candidates to finalize (``k`` per sentence, allocated over all), the next
        beam's (``k``, allocated over those that do not end), and the beam's progress."""
        live, k = beams.scores.shape
        device = log_probs.device
        sentence = torch.tensor(beams.sentences, device=device)
        row_sentence = sentence.repeat_interleave(k)
        tokens, fail = self.tokens[row_sentence], self.fail[row_sentence]
        lengths, total = self.lengths[row_sentence], self.total[row_sentence]
        unmet = self.progress.lt(lengths)
        # each unmet phrase's next token, and its first (to start it over)
        following = tokens.gather(2, self.progress.clamp(max=tokens.size(2) - 1).unsqueeze(2))
        following = torch.where(unmet, following.squeeze(2), -1)
        restarting = torch.where(unmet & self.progress.gt(0), tokens[:, :, 0], -1)
        best = log_probs.topk(min(2 * k, log_probs.size(1)), dim=1).indices
        cand = torch.cat([best, following, restarting], dim=1)  # [R, M]
        width = cand.size(1)
        earlier = torch.ones(width, width, dtype=torch.bool, device=device).tril(-1)
        repeated = (cand.unsqueeze(2).eq(cand.unsqueeze(1)) & earlier).any(-1)
        scores = beams.scores.view(-1, 1) + log_probs.gather(1, cand.clamp(min=0)).float()
        progress = self._advance(tokens, fail, lengths, cand)  # [R, M, C]
        lengths_m = lengths.unsqueeze(1)
        met = progress.eq(lengths_m)
        # tokens still needed at most: the unmet phrases whole, less the longest progress
        needed = (lengths_m * ~met).sum(-1) - (progress * ~met).amax(-1)
        bank = total.unsqueeze(1) - needed
        limits = beams.limits.repeat_interleave(k).unsqueeze(1)
        is_eos = cand.eq(rules.eos)
        ok = cand.ge(0) & ~repeated & ~(is_eos & needed.gt(0)) & needed.le(limits - (t + 1))
        scores = scores.masked_fill(~ok, NEG_INF)
        ending = is_eos | limits.le(t + 1)

        def per_sentence(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(live, k * width, *x.shape[2:])

        # (a slot without a candidate carries a harmless token: it is never read)
        s_scores, s_bank, s_ending = (per_sentence(x) for x in (scores, bank, ending))
        s_token = per_sentence(cand.clamp(min=0))
        source = torch.arange(k * width, device=device).div(width, rounding_mode="floor")
        source = source.expand(live, -1)
        banks = self.total[sentence] + 1
        picked = _allocate(s_scores, s_bank, banks, k)
        to_finish = _gathered(picked, s_scores, source, s_token, s_ending)
        going_scores = s_scores.masked_fill(s_ending, NEG_INF)
        going = _allocate(going_scores, s_bank, banks, k)
        to_keep = _gathered(going, going_scores, source, s_token, None)
        phrases = progress.size(2)
        kept = per_sentence(progress).gather(
            1, going.unsqueeze(2).expand(live, k, phrases)
        )  # [L, k, C]
        return to_finish, to_keep, kept

    def follow(self, progress: torch.Tensor, keep: list[int]) -> None:
        """Take the new beam's progress, for the sentences that go on."""
        self.progress = progress[keep].reshape(-1, progress.size(-1))


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
        torch.arange(picked.size(0), device=picked.device).unsqueeze(1),
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


def _distinct(phrases: Phrases) -> Phrases:
    """The phrases less repeats and those inside another (met whenever it is)."""
    unique = [list(p) for p in dict.fromkeys(map(tuple, phrases))]

    def inside(a: list[int], b: list[int]) -> bool:
        return len(a) < len(b) and any(b[i : i + len(a)] == a for i in range(len(b) - len(a) + 1))

    return [p for p in unique if not any(inside(p, q) for q in unique)]


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
    forbidden = {rules.bos, rules.eos, *rules.banned}
    for row, sentence in enumerate(phrases):
        for phrase in sentence:
            if forbidden & set(phrase):
                raise ValueError(
                    f"source {row + 1}: a constraint holds token(s) "
                    f"{sorted(forbidden & set(phrase))} that no output may produce (BOS, EOS "
                    "or decode.banned)"
                )
    phrases = [_distinct(row) for row in phrases]
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
    found = finished.best()
    stuck = [row + 1 for row, hyps in enumerate(found) if not hyps]
    if stuck:
        raise ValueError(
            f"source {stuck[0]}: no output contains every constraint under the decode rules "
            "(decode.banned, no_repeat_ngram, min_len and the length limit)"
        )
    return found
