"""Tests for seq2seq.metrics: each metric against known values and sacrebleu itself."""

import pytest
import sacrebleu

from seq2seq import metrics

HYPS = ["the cat sat on the mat", "a dog barked loudly at night", "hello world"]
REFS = ["the cat sat on a mat", "the dog barked loudly at night", "hello there world"]


def test_bleu_of_identical_text_is_100_with_13a_signature():
    # BLEU needs 4-grams, so every sentence has at least four words.
    refs = ["the quick brown fox jumps", "over the lazy dog today"]
    score, signature = metrics.bleu(refs, refs)
    assert score == pytest.approx(100.0)
    assert "tok:13a" in signature
    assert "case:mixed" in signature


def test_bleu_matches_sacrebleu_directly():
    score, _ = metrics.bleu(HYPS, REFS)
    assert score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert 0.0 < score < 100.0


def test_chrf_matches_sacrebleu_directly():
    score, signature = metrics.chrf(HYPS, REFS)
    assert score == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert "nc:6" in signature
    assert metrics.chrf(REFS, REFS)[0] == pytest.approx(100.0)


def test_rouge_identical_is_100_and_disjoint_is_0():
    same = metrics.rouge(REFS, REFS)
    assert same == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    disjoint = metrics.rouge(["alpha beta gamma"], ["delta epsilon zeta"])
    assert disjoint == pytest.approx({"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})


def test_rouge_keeps_ascii_parts_of_accented_words():
    # The default tokenizer splits "Straße" into "stra" and "e" but does not drop it.
    text = ["Über die Straße für Müller"]
    assert metrics.rouge(text, text)["rouge1"] == pytest.approx(100.0)
    assert metrics.rouge(["Über die Straße"], ["Unter der Brücke"])["rouge1"] < 100.0


def test_rouge_is_a_mean_over_pairs():
    scores = metrics.rouge(["a b c", "x y z"], ["a b c", "p q r"])
    assert scores["rouge1"] == pytest.approx(50.0)


def test_exact_match_ignores_surrounding_whitespace_only():
    hyps = ["  hello world\n", "hello  world", "Hello world", "ok"]
    refs = ["hello world", "hello world", "hello world", "ok "]
    assert metrics.exact_match(hyps, refs) == pytest.approx(0.5)


def test_compute_with_all_metrics_returns_every_key():
    scores = metrics.compute(HYPS, REFS, metrics.METRICS)
    assert set(scores) == {
        "bleu",
        "bleu_signature",
        "bleu1",
        "bleu1_signature",
        "bleu2",
        "bleu2_signature",
        "chrf",
        "chrf_signature",
        "rouge1",
        "rouge2",
        "rougeL",
        "rouge_signature",
        "exact_match",
        "distinct1",
        "distinct2",
    }
    assert isinstance(scores["bleu_signature"], str)
    assert "stemmer:porter" in scores["rouge_signature"]
    assert scores["exact_match"] == pytest.approx(0.0)


def test_compute_defaults_to_bleu_and_accepts_a_bare_name():
    assert set(metrics.compute(HYPS, REFS)) == {"bleu", "bleu_signature"}
    assert set(metrics.compute(HYPS, REFS, "exact")) == {"exact_match"}


def test_mismatched_lengths_name_both_counts():
    with pytest.raises(ValueError, match=r"3 hypotheses against 2 references"):
        metrics.compute(HYPS, REFS[:2])
    with pytest.raises(ValueError, match=r"1 hypotheses against 2 references"):
        metrics.bleu(HYPS[:1], REFS[:2])


def test_unknown_metric_lists_the_valid_ones():
    valid = r"'bleu', 'bleu1', 'bleu2', 'chrf', 'rouge', 'exact', 'distinct'"
    with pytest.raises(ValueError, match=rf"'meteor'.*{valid}"):
        metrics.compute(HYPS, REFS, ["bleu", "meteor"])


def test_empty_input_is_rejected():
    with pytest.raises(ValueError, match="empty"):
        metrics.compute([], [])


def test_format_table_aligns_numbers_and_lists_signatures():
    scores = metrics.compute(HYPS, REFS, metrics.METRICS)
    table = metrics.format_table(scores)
    lines = table.splitlines()
    for name in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"):
        assert any(line.split()[:1] == [name] for line in lines), name
    assert f"bleu_signature: {scores['bleu_signature']}" in lines
    assert f"chrf_signature: {scores['chrf_signature']}" in lines
    assert "0.0000" in table  # exact_match gets four decimals
    score_lines = lines[: lines.index("")]
    assert len({len(line) for line in score_lines}) == 1  # right-aligned column


def test_format_table_decimals_and_alignment():
    table = metrics.format_table({"bleu": 34.123, "exact_match": 0.97})
    assert table.splitlines() == [
        "metric        score",
        "bleu          34.12",
        "exact_match  0.9700",
    ]


# ---------------------------------------------------------------------------- several references

OTHER = ["the cat is sitting on the mat", "a dog barked loudly at night", "hi world"]


def test_multi_reference_bleu_and_chrf_match_sacrebleu():
    score, signature = metrics.bleu(HYPS, [REFS, OTHER])
    assert score == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS, OTHER]).score)
    assert score > metrics.bleu(HYPS, REFS)[0] and "nrefs:2" in signature
    chrf, _ = metrics.chrf(HYPS, [REFS, OTHER])
    assert chrf == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS, OTHER]).score)


def test_multi_reference_rouge_takes_each_hypothesis_best_reference():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    expected = {name: 0.0 for name in ("rouge1", "rouge2", "rougeL")}
    for hyp, a, b in zip(HYPS, REFS, OTHER, strict=True):
        for name, score in scorer.score_multi([a, b], hyp).items():
            expected[name] += 100.0 * score.fmeasure / len(HYPS)
    got = metrics.rouge(HYPS, [REFS, OTHER])
    assert got == pytest.approx(expected)
    assert got["rouge1"] > metrics.rouge(HYPS, REFS)["rouge1"]
    assert metrics.rouge_signature([REFS, OTHER]).startswith("rouge-score|F1|stemmer:porter")


def test_exact_match_counts_any_reference():
    assert metrics.exact_match(HYPS, [REFS, OTHER]) == pytest.approx(1 / 3)


def test_rouge_lsum_only_for_references_with_several_sentences():
    from rouge_score import rouge_scorer

    hyps = ["Jerry is happy! Amanda baked cookies."]  # the reference's sentences, swapped
    refs = ["Amanda baked cookies. Jerry is happy!"]
    got = metrics.rouge(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    lines = [text.replace(". ", ".\n").replace("! ", "!\n") for text in (refs[0], hyps[0])]
    assert got["rougeLsum"] == pytest.approx(100 * scorer.score(*lines)["rougeLsum"].fmeasure)
    assert got["rougeLsum"] == pytest.approx(100.0) and got["rougeL"] < 75.0
    assert "rougeLsum" not in metrics.rouge(HYPS, REFS)


def test_every_reference_stream_must_match_the_hypotheses():
    with pytest.raises(
        ValueError, match="3 hypotheses against 2 references.*in every reference stream"
    ):
        metrics.bleu(HYPS, [REFS, OTHER[:2]])


# ---------------------------------------------------------------------------- dialogue metrics


def test_distinct_n_by_hand():
    # unigrams a b a | b c: 3 distinct of 5; bigrams (a b) (b a) | (b c): 3 of 3
    assert metrics.distinct(["a b a", "b c"], 1) == pytest.approx(3 / 5)
    assert metrics.distinct(["a b a", "b c"], 2) == pytest.approx(3 / 3)
    # n-grams never cross outputs; punctuation is a word (13a): "ok ." "ok ." -> 2 of 4 ...
    assert metrics.distinct(["ok.", "ok."], 1) == pytest.approx(2 / 4)
    assert metrics.distinct(["ok.", "ok."], 2) == pytest.approx(1 / 2)  # ... (ok .) twice
    assert metrics.distinct(["one", ""], 2) == 0.0  # no bigram at all
    with pytest.raises(ValueError, match="n >= 1"):
        metrics.distinct(["a"], 0)


def test_bleu_1_and_2_by_hand():
    # hypothesis 2 words, reference 3: every n-gram matches, brevity penalty exp(1 - 3/2)
    bp = 0.6065306597126334
    assert metrics.bleu_n(["the cat"], ["the cat sat"], 1)[0] == pytest.approx(100 * bp)
    # "the cat sat down" vs "the cat sat on": unigrams 3/4, bigrams 2/3, same length
    two = metrics.bleu_n(["the cat sat down"], ["the cat sat on"], 2)
    assert two[0] == pytest.approx(100 * (3 / 4 * 2 / 3) ** 0.5)
    assert two[1].endswith("|ngram:2")
    one = metrics.bleu_n(["the cat sat down"], ["the cat sat on"], 1)[0]
    assert one == pytest.approx(75.0)


def test_distinct_and_bleu_n_through_compute():
    scores = metrics.compute(["a b a", "b c"], ["a b", "b c"], ["distinct", "bleu1"])
    assert scores["distinct1"] == pytest.approx(0.6) and scores["distinct2"] == 1.0
    assert scores["bleu1"] == pytest.approx(80.0)  # clipped unigram matches 4 of 5, no BP
    table = metrics.format_table(scores).splitlines()
    assert "distinct1  0.6000" in table and "bleu1       80.00" in table
