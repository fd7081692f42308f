"""Searches through the model contract: beam, sampling, ensembles, scoring, rules.

Each property runs on every model family of the shared battery.
"""

import itertools

import pytest
import torch

from seq2seq.config import ModelConfig
from seq2seq.models.build import build_model
from seq2seq.search import Ensemble, Rules, beam_search, greedy, length_penalty, sample, score
from tests.test_models import BOS, EOS, PAD, VARIANTS, batch, make

RULES = Rules(bos=BOS, eos=EOS, max_len_a=1.0, max_len_b=3, banned=(PAD, BOS))


@pytest.fixture(params=sorted(VARIANTS))
def model(request):
    return make(request.param)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_of_one_is_greedy(model, alpha):
    src, _ = batch()
    for g, b in zip(
        greedy(model, src, RULES),
        beam_search(model, src, RULES, beam_size=1, alpha=alpha),
        strict=True,
    ):
        assert b[0].tokens == g.tokens
        assert b[0].log_prob == pytest.approx(g.log_prob, abs=1e-4)


def test_batched_beam_equals_one_by_one(model):
    src, _ = batch()
    together = beam_search(model, src, RULES, beam_size=4, n_best=3, keep_attention=True)
    for i in range(src.size(0)):
        row = src[i : i + 1, : int(src[i].ne(PAD).sum())]
        alone = beam_search(model, row, RULES, beam_size=4, n_best=3, keep_attention=True)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in together[i]]
        for a, t in zip(alone, together[i], strict=True):
            assert a.score == pytest.approx(t.score, abs=1e-4)
            if a.attention is not None:
                cols = a.attention.size(1)
                assert torch.allclose(a.attention, t.attention[:, :cols], atol=1e-5)
                assert t.attention[:, cols:].abs().sum() < 1e-6  # padding gets no weight


def test_nbest_lists_are_sorted_and_distinct(model):
    src, _ = batch()
    limits = RULES.limits(src.ne(PAD).sum(1), None).tolist()
    for hyps, limit in zip(
        beam_search(model, src, RULES, beam_size=5, n_best=5, alpha=0.6), limits, strict=True
    ):
        scores = [h.score for h in hyps]
        assert len(hyps) == 5
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == 5
        for h in hyps:  # the score is the log-probability under the length penalty
            steps = len(h.tokens) + (1 if len(h.tokens) < limit else 0)  # + EOS
            assert h.score == pytest.approx(h.log_prob / length_penalty(steps, 0.6), rel=1e-5)


def test_scores_are_the_forced_log_likelihood(model):
    src, _ = batch()
    limits = RULES.limits(src.ne(PAD).sum(1), None).tolist()
    hyps = [h[0] for h in beam_search(model, src, RULES, beam_size=3, alpha=0.0)]
    for i, (hyp, limit) in enumerate(zip(hyps, limits, strict=True)):
        if len(hyp.tokens) < limit:  # ended with EOS
            tgt_in, tgt_out = [BOS, *hyp.tokens], [*hyp.tokens, EOS]
        else:  # cut at the length limit
            tgt_in, tgt_out = [BOS, *hyp.tokens[:-1]], hyp.tokens
        forced = score(model, src[i : i + 1], torch.tensor([tgt_in]), torch.tensor([tgt_out]))
        assert forced[0] == pytest.approx(hyp.log_prob, abs=1e-4)


def _tiny_model(arch: str, seed: int):
    torch.manual_seed(seed)
    sizes = {"heads": 2, "ff_dim": 16} if arch == "transformer" else {"emb_dim": 8}
    cfg = ModelConfig(arch=arch, hidden_dim=8, dropout=0.0, **sizes)
    return build_model(cfg, 9, 6, pad_id=PAD).eval()


def _brute_force_best(model, src, rules, limit):
    """Score every possible output: EOS after fewer than ``limit`` tokens, or cut at it."""
    allowed = [t for t in range(model.tgt_vocab_size) if t not in rules.banned and t != EOS]
    candidates = []
    for length in range(limit + 1):
        for body in itertools.product(allowed, repeat=length):
            if length < limit:
                candidates.append(([BOS, *body], [*body, EOS], list(body)))
            else:
                candidates.append(([BOS, *body[:-1]], list(body), list(body)))
    scored = [
        (score(model, src, torch.tensor([i]), torch.tensor([o]))[0], body)
        for i, o, body in candidates
    ]
    return max(scored)


@pytest.mark.parametrize(
    "arch,seed", [("rnn", s) for s in range(3)] + [("transformer", s) for s in range(3)]
)
def test_full_width_beam_finds_the_brute_force_optimum(arch, seed):
    model = _tiny_model(arch, seed)
    src = torch.tensor([[5, 7, 4]])
    rules = Rules(bos=BOS, eos=EOS, max_len_a=0.0, max_len_b=3, banned=(PAD, BOS))
    best_score, best_tokens = _brute_force_best(model, src, rules, limit=3)
    # As wide as the vocabulary, and at least as wide as the number of 2-token prefixes
    # (3 allowed tokens), so that no prefix is ever pruned: the search must be exact.
    width = max(model.tgt_vocab_size, 3**2)
    hyp = beam_search(model, src, rules, beam_size=width, alpha=0.0)[0][0]
    assert hyp.tokens == best_tokens
    assert hyp.log_prob == pytest.approx(best_score, abs=1e-5)


def test_top_k_one_sampling_is_greedy(model):
    src, _ = batch()
    gen = torch.Generator().manual_seed(0)
    sampled = sample(model, src, RULES, top_k=1, temperature=0.7, generator=gen)
    for s, g in zip(sampled, greedy(model, src, RULES), strict=True):
        assert s.tokens == g.tokens
        assert s.log_prob == pytest.approx(g.log_prob, abs=1e-5)


def test_sampling_is_reproducible_with_a_seed_and_varies_without():
    model = make("transformer-pre")
    src = batch()[0].repeat(4, 1)
    rules = Rules(bos=BOS, eos=EOS, max_len_a=2.0, max_len_b=5, banned=(PAD, BOS))

    def draw(seed):
        gen = torch.Generator().manual_seed(seed)
        return [h.tokens for h in sample(model, src, rules, temperature=1.5, generator=gen)]

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)


def test_top_p_keeps_the_smallest_set_reaching_p():
    from seq2seq.search.greedy import truncate

    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = truncate(logits, top_k=0, top_p=0.75).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = truncate(logits, top_k=3, top_p=1.0).isfinite()
    assert kept.tolist() == [[True, True, True, False]]
    assert truncate(logits, top_k=0, top_p=0.1).isfinite().sum() == 1


def test_ensemble_of_one_is_the_model(model):
    src, tgt = batch()
    ensemble = Ensemble([model])
    for e, m in zip(
        beam_search(ensemble, src, RULES, beam_size=3),
        beam_search(model, src, RULES, beam_size=3),
        strict=True,
    ):
        assert e[0].tokens == m[0].tokens
        assert e[0].score == pytest.approx(m[0].score, abs=1e-5)
    direct = torch.log_softmax(model(src, tgt), -1)
    assert torch.allclose(ensemble(src, tgt), direct, atol=1e-5)


def test_ensemble_averages_log_probabilities():
    a, b = make("gru-bahdanau"), make("transformer-pre")
    src, _ = batch()
    ensemble = Ensemble([a, b])
    prev = torch.full((3,), BOS)
    got, _, attn = ensemble.step(prev, ensemble.init_state(ensemble.encode(src)))
    la, _, _ = a.step(prev, a.init_state(a.encode(src)))
    lb, _, _ = b.step(prev, b.init_state(b.encode(src)))
    assert torch.allclose(got, torch.log_softmax((la + lb) / 2, -1), atol=1e-5)
    assert torch.allclose(got.exp().sum(-1), torch.ones(3), atol=1e-5)
    assert attn.shape == (3, src.size(1))


def test_greedy_never_runs_past_the_transformers_positions():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="transformer", hidden_dim=16, ff_dim=32, max_positions=12, dropout=0.0)
    model = build_model(cfg, 20, 20).eval()
    src = torch.randint(3, 20, (2, 11))
    hyps = greedy(model, src, Rules(bos=1, eos=2, max_len_a=3.0, max_len_b=50))
    assert all(len(h.tokens) <= 12 for h in hyps)  # inputs BOS, y1..y11 fill 12 positions


def test_min_len_banned_and_no_repeat_rules(model):
    src, _ = batch()
    rules = Rules(
        bos=BOS,
        eos=EOS,
        max_len_a=2.0,
        max_len_b=4,
        min_len=4,
        no_repeat_ngram=2,
        banned=(PAD, BOS, 5),
    )
    for search in (
        lambda: [h[0] for h in beam_search(model, src, rules, beam_size=3)],
        lambda: greedy(model, src, rules),
    ):
        for h in search():
            assert len(h.tokens) >= 4
            assert 5 not in h.tokens
            bigrams = list(zip(h.tokens, h.tokens[1:], strict=False))
            assert len(bigrams) == len(set(bigrams))


def test_no_repeat_unigram_bans_every_seen_token():
    log_probs = torch.zeros(2, 6)
    history = torch.tensor([[3, 4, 3], [5, 5, 5]])
    Rules(bos=BOS, eos=EOS, no_repeat_ngram=1).apply(log_probs, 3, history)
    assert log_probs.isinf().tolist() == [
        [False, False, False, True, True, False],
        [False, False, False, False, False, True],
    ]
    log_probs = torch.zeros(1, 6)
    Rules(bos=BOS, eos=EOS, no_repeat_ngram=2).apply(log_probs, 3, torch.tensor([[3, 4, 3]]))
    assert log_probs.isinf().nonzero()[:, 1].tolist() == [4]  # "3 4" seen: 4 may not follow 3


@torch.no_grad()
def test_transformer_deferred_reorders_compose_and_leave_states_valid():
    """Reordering is deferred to the next step, which copies the cache once (the
    ``out=`` path, taken without autograd): two reorders in a row equal decoding the
    selected rows from the start, and the state reordered from still steps as before."""
    model = make("transformer-pre")
    src, _ = batch()
    prefix = [torch.tensor([5, 6, 7]), torch.tensor([8, 9, 10])]
    state = model.init_state(model.encode(src))
    for tokens in prefix:
        _, state, _ = model.step(tokens, state)
    before, _, _ = model.step(torch.tensor([4, 4, 4]), state)
    first, second = torch.tensor([2, 0, 0, 1]), torch.tensor([3, 1, 2, 2, 0])
    moved = model.reorder(model.reorder(state, first), second)
    got, moved, _ = model.step(torch.full((5,), 11), moved)
    got_next, _, _ = model.step(torch.full((5,), 12), moved)
    rows = first[second]
    fresh = model.init_state(model.encode(src[rows]))
    for tokens in prefix:
        _, fresh, _ = model.step(tokens[rows], fresh)
    want, fresh, _ = model.step(torch.full((5,), 11), fresh)
    want_next, _, _ = model.step(torch.full((5,), 12), fresh)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_next, want_next, atol=1e-5, rtol=1e-5)
    again, _, _ = model.step(torch.tensor([4, 4, 4]), state)
    torch.testing.assert_close(again, before)


def test_transformer_reorder_of_grouped_rows_matches_ungrouped():
    """Beam rows share their sentence's memory; any reordering must still pick the
    right memory row, also when groups break up."""
    model = make("transformer-pre")
    src, _ = batch()
    plain = model.init_state(model.encode(src))
    grouped = model.reorder(plain, torch.arange(3).repeat_interleave(2))  # 2 rows a sentence
    assert grouped.group == 2 and grouped.mask.size(0) == 3
    prev = torch.tensor([5, 6, 7, 8, 9, 10])
    _, grouped, _ = model.step(prev, grouped)
    for index in ([0, 1, 1, 5], [2, 3, 0, 1], [4, 5], [5, 4, 3, 2, 1, 0]):
        index = torch.tensor(index)
        a, state, _ = model.step(torch.full((len(index),), 4), model.reorder(grouped, index))
        sources = torch.div(index, 2, rounding_mode="floor")
        expected = model.reorder(
            model.init_state(model.encode(src[sources])), torch.arange(len(index))
        )
        expected.cache = [[t.index_select(0, index) for t in c] for c in grouped.cache]
        expected.position = grouped.position
        b, _, _ = model.step(torch.full((len(index),), 4), expected)
        assert torch.allclose(a, b, atol=1e-5), index


@pytest.mark.parametrize("vocab", [8000, 8001, 4000, 97, 64, 12, 3])
def test_beam_scoring_by_blocks_equals_ranking_every_continuation(vocab):
    """The 2k best continuations found through the vocabulary's blocks are those of a
    ranking of all k * vocab continuations per sentence (empty slots and banned
    tokens included): vocabularies of whole blocks of 64, with a last block that
    overlaps the one before (by 63 entries for 8001), of one block, and smaller than
    2k."""
    from seq2seq.search.beam import _Beams, _score

    generator = torch.Generator().manual_seed(vocab)
    live, k = 4, 5
    log_probs = torch.randn(live * k, vocab, generator=generator).log_softmax(-1)
    log_probs[:, 0] = float("-inf")  # a banned token
    scores = torch.randn(live, k, generator=generator) * 3
    scores[0, 1:] = float("-inf")  # a sentence at its first step: one live slot
    beams = _Beams([0, 1, 2, 3], torch.tensor([9, 9, 9, 1]), scores, None, None, None)
    got = _score(beams, log_probs, RULES, 0)

    every = (scores.view(-1, 1) + log_probs).view(live, k * vocab)
    want_scores, index = every.topk(min(2 * k, k * vocab), dim=1)
    torch.testing.assert_close(got.scores, want_scores, rtol=0, atol=0)
    finite = want_scores.isfinite()
    assert torch.equal(got.beam[finite], (index // vocab)[finite])
    assert torch.equal(got.token[finite], (index % vocab)[finite])
    assert got.ending[3].all() and torch.equal(got.ending[:3], got.token[:3].eq(EOS))
