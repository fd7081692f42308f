"""Lexically constrained beam search on every model family: exact against brute force,
every constraint in every output, batches equal to one by one, impossible constraints."""

import itertools
from pathlib import Path

import pytest
import torch

from seq2seq.api import Seq2Seq
from seq2seq.errors import ConfigError
from seq2seq.search import Ensemble, Rules, beam_search, constrained_beam_search, score
from seq2seq.search.constrained import _allocate
from tests.conftest import REVERSE_SOURCES, cli_error, cli_lines
from tests.test_models import BOS, EOS, PAD, VARIANTS, batch, make
from tests.test_search import _tiny_model

RULES = Rules(bos=BOS, eos=EOS, max_len_a=1.0, max_len_b=4, banned=(PAD, BOS))


def _contains(tokens: list[int], phrase: list[int]) -> bool:
    n = len(phrase)
    return any(tokens[i : i + n] == phrase for i in range(len(tokens) - n + 1))


@pytest.fixture(params=sorted(VARIANTS))
def model(request):
    return make(request.param)


def test_every_output_contains_every_constraint(model):
    src, _ = batch()
    phrases = [
        [[5, 6, 7]],
        [[9], [4, 4]],
        [[11, 12], [12, 13]],
    ]  # multi-piece, repeated, overlapping
    found = constrained_beam_search(model, src, RULES, phrases, beam_size=5, n_best=3)
    for hyps, wanted in zip(found, phrases, strict=True):
        assert len(hyps) == 3
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for hyp in hyps:
            assert all(_contains(hyp.tokens, p) for p in wanted), (hyp.tokens, wanted)


def test_batched_constraints_equal_one_by_one(model):
    src, _ = batch()
    phrases = [[[5, 6]], [], [[8], [9, 10]]]  # different constraints per sentence, and none
    together = constrained_beam_search(model, src, RULES, phrases, beam_size=4, n_best=2)
    for i in range(src.size(0)):
        row = src[i : i + 1, : int(src[i].ne(PAD).sum())]
        alone = constrained_beam_search(model, row, RULES, [phrases[i]], beam_size=4, n_best=2)
        assert [h.tokens for h in alone[0]] == [h.tokens for h in together[i]]
        for a, t in zip(alone[0], together[i], strict=True):
            assert a.score == pytest.approx(t.score, abs=1e-4)


def test_scores_are_the_forced_log_likelihood_of_the_constrained_output():
    model = make("transformer-pre")
    src, _ = batch()
    limits = RULES.limits(src.ne(PAD).sum(1), None).tolist()
    found = constrained_beam_search(model, src, RULES, [[[7, 8]]] * 3, beam_size=3, alpha=0.0)
    for i, (hyps, limit) in enumerate(zip(found, limits, strict=True)):
        hyp = hyps[0]
        ended = len(hyp.tokens) < limit
        tgt_in = [BOS, *hyp.tokens] if ended else [BOS, *hyp.tokens[:-1]]
        tgt_out = [*hyp.tokens, EOS] if ended else hyp.tokens
        forced = score(model, src[i : i + 1], torch.tensor([tgt_in]), torch.tensor([tgt_out]))
        assert forced[0] == pytest.approx(hyp.log_prob, abs=1e-4)


def _brute_force_best_with(model, src, rules, limit, phrases):
    """The best output of at most ``limit`` tokens that contains every phrase."""
    allowed = [t for t in range(model.tgt_vocab_size) if t not in rules.banned and t != EOS]
    best = None
    for length in range(limit + 1):
        for body in itertools.product(allowed, repeat=length):
            body = list(body)
            if not all(_contains(body, p) for p in phrases):
                continue
            if length < limit:
                tgt_in, tgt_out = [BOS, *body], [*body, EOS]
            else:
                tgt_in, tgt_out = [BOS, *body[:-1]], body
            found = score(model, src, torch.tensor([tgt_in]), torch.tensor([tgt_out]))[0]
            best = max(best or (found, body), (found, body))
    return best


@pytest.mark.parametrize(
    "arch,seed,phrases,limit",
    [
        ("rnn", 0, [[4]], 3),
        ("rnn", 1, [[5, 3]], 3),
        ("rnn", 2, [[3], [5]], 3),
        ("transformer", 0, [[4, 4]], 3),
        ("transformer", 1, [[5], [3, 4]], 3),
        ("transformer", 2, [[3, 5]], 3),
        ("rnn", 1, [[3, 3, 4]], 5),  # a repeated prefix: "3 3 3 4" holds it
        ("rnn", 0, [[3, 4], [3, 5]], 5),  # a shared first token
        ("rnn", 0, [[3, 5], [3, 4]], 5),  # ... whichever comes first in the list
        ("transformer", 0, [[3, 4], [4, 5]], 5),  # overlapping: "3 4 5" holds both
        ("transformer", 1, [[4, 5], [5, 4, 3]], 5),
        ("rnn", 2, [[5], [5, 3], [3, 5]], 5),  # a phrase inside another
    ],
)
def test_full_width_constrained_beam_finds_the_best_constrained_output(arch, seed, phrases, limit):
    # the phrases fit the limit one after the other (see the module on overlaps)
    model = _tiny_model(arch, seed)
    src = torch.tensor([[5, 7, 4]])
    rules = Rules(bos=BOS, eos=EOS, max_len_a=0.0, max_len_b=limit, banned=(PAD, BOS))
    best_score, best_tokens = _brute_force_best_with(model, src, rules, limit, phrases)
    # wide enough that every bank holds every prefix: nothing is pruned, the search is exact
    width = 64 if limit == 3 else 512
    hyp = constrained_beam_search(model, src, rules, [phrases], beam_size=width, alpha=0.0)
    assert hyp[0][0].tokens == best_tokens
    assert hyp[0][0].log_prob == pytest.approx(best_score, abs=1e-5)


def test_without_constraints_it_finds_what_beam_search_finds():
    model = make("gru-bahdanau")
    src, _ = batch()
    plain = beam_search(model, src, RULES, beam_size=4, alpha=0.0)
    free = constrained_beam_search(model, src, RULES, [[], [], []], beam_size=4, alpha=0.0)
    assert [h[0].tokens for h in plain] == [h[0].tokens for h in free]


def test_constraints_work_through_an_ensemble():
    ensemble = Ensemble([make("gru-bahdanau"), make("transformer-pre")])
    src, _ = batch()
    found = constrained_beam_search(ensemble, src, RULES, [[[6, 6]]] * 3, beam_size=3)
    assert all(_contains(h[0].tokens, [6, 6]) for h in found)


def test_impossible_and_malformed_constraints_are_clear_errors():
    model = make("gru-bahdanau")
    src, _ = batch()  # output limits: 5 + 4, 7 + 4, 3 + 4 tokens
    too_long = [[], [], [[5] * 8]]
    with pytest.raises(ValueError, match=r"source 3: its constraints need 8 output tokens, but"):
        constrained_beam_search(model, src, RULES, too_long)
    with pytest.raises(ValueError, match="empty constraint"):
        constrained_beam_search(model, src, RULES, [[[]], [], []])
    with pytest.raises(ValueError, match="2 constraint lists for 3 sources"):
        constrained_beam_search(model, src, RULES, [[], []])


def test_a_constraint_filling_the_whole_output_is_met():
    model = make("transformer-pre")
    src, _ = batch()
    limit = int(RULES.limits(src[2:3].ne(PAD).sum(1), None))
    phrase = [9] * limit
    (hyps,) = constrained_beam_search(model, src[2:3, :3], RULES, [[phrase]], beam_size=2)
    assert hyps[0].tokens == phrase


def test_allocation_gives_each_bank_its_share_then_the_best_of_the_rest():
    scores = torch.tensor([[-1.0, -2.0, -3.0, -4.0, -5.0, float("-inf")]])
    bank = torch.tensor([[0, 0, 0, 1, 2, 2]])
    # 3 banks, k = 4: one place each, the spare one to the top bank, which has one
    # candidate only; the last place goes to the best remaining (bank 0's second)
    picked = _allocate(scores, bank, torch.tensor([3]), 4)
    assert picked.tolist() == [[0, 1, 3, 4]]


# ---------------------------------------------------------------------------- through engines


def test_the_translator_meets_each_texts_constraints(reverse_translators, arch):
    beam = reverse_translators[arch].configure(method="beam", beam_size=4, n_best=2)
    texts = REVERSE_SOURCES[:4]
    wanted = [["z"], ["7 7", "a"], [], ["q r"]]
    results = beam.translate(texts, constraints=wanted)
    for result, phrases in zip(results, wanted, strict=True):
        for text, _ in result.nbest:
            words = text.split()
            for phrase in phrases:
                assert _contains(words, phrase.split()), (text, phrase)
    free = beam.translate(texts[2:3])  # no constraint: the plain beam's output
    assert results[2].text == free[0].text


def test_constraint_errors_name_the_problem(reverse_translators):
    greedy = reverse_translators["rnn"]
    with pytest.raises(ConfigError, match="lexical constraints need beam search, not greedy"):
        greedy.translate(["a b"], constraints=[["a"]])
    beam = greedy.configure(method="beam")
    with pytest.raises(ConfigError, match=r"constraint 'ünknown': the target vocabulary cannot"):
        beam.translate(["a b"], constraints=[["ünknown"]])
    with pytest.raises(ConfigError, match="2 lists of phrases for 1 texts"):
        beam.translate(["a b"], constraints=[["a"], ["b"]])
    with pytest.raises(ConfigError, match="constraints: source 1: its constraints need"):
        beam.translate(["a"], constraints=[["a b c d e f g h"]])
    with pytest.raises(ConfigError, match="constraint 'b </s>': </s> is a special symbol"):
        beam.translate(["a b"], constraints=[["b </s>"]])
    with pytest.raises(ConfigError, match=r"holds token\(s\) \[\d+\] that no output may"):
        beam.configure(banned=("b",)).translate(["a b"], constraints=[["b"]])


def test_predict_takes_constraints_per_text(reverse_runs):
    model = Seq2Seq.load(reverse_runs["transformer"], device="cpu")
    (out,) = model.predict(["c b a"], constraints=[["x y"]], method="beam", beam_size=3)
    assert _contains(out.split(), ["x", "y"])
    with pytest.raises(ConfigError, match="one list of phrases per text"):
        model.predict(["c b a"], constraints=["x y"], method="beam")


def test_translate_command_reads_constraints_from_flags_and_a_file(
    reverse_runs, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    inputs = tmp_path / "in.txt"
    inputs.write_text("a b c\n\nd e f\n", encoding="utf-8")
    phrases = tmp_path / "constraints.tsv"
    phrases.write_text("q\tr s\n\n\n", encoding="utf-8")
    run = reverse_runs["rnn"]
    argv = ["translate", run, "-i", inputs, "--beam", 3, "--constraint", "z"]
    lines = cli_lines([*argv, "--constraints", phrases], capsys)
    assert lines[1] == ""  # an empty line stays empty
    assert all(_contains(lines[0].split(), p) for p in (["z"], ["q"], ["r", "s"]))
    assert _contains(lines[2].split(), ["z"])
    phrases.write_text("q\n", encoding="utf-8")
    error = cli_error([*argv, "--constraints", phrases], capsys)
    assert "1 lines, but the input has 3" in error


def test_constraints_no_output_can_meet_are_errors():
    model = _tiny_model("rnn", 0)
    src = torch.tensor([[5, 7, 4]])
    with pytest.raises(ValueError, match=r"token\(s\) \[2\] that no output may produce"):
        constrained_beam_search(model, src, RULES, [[[4, EOS]]])
    banned = Rules(bos=BOS, eos=EOS, max_len_b=4, banned=(PAD, BOS, 4))
    with pytest.raises(ValueError, match=r"token\(s\) \[4\]"):
        constrained_beam_search(model, src, banned, [[[4]]])
    no_repeat = Rules(bos=BOS, eos=EOS, max_len_b=6, banned=(PAD, BOS), no_repeat_ngram=1)
    with pytest.raises(ValueError, match="no output contains every constraint under the"):
        constrained_beam_search(model, src, no_repeat, [[[3, 3]]])
    twice = constrained_beam_search(model, src, RULES, [[[4], [4]]], beam_size=2)
    assert 4 in twice[0][0].tokens  # a phrase given twice needs one occurrence
