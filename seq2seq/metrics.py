"""Corpus-level evaluation metrics over detokenized text.

Every function here is pure: it takes hypothesis and reference strings (already
detokenized) and returns numbers, so translate, evaluate and training validation all score
text the same way. References are one string per hypothesis, or several such streams
(``[refs_a, refs_b, ...]``, as sacrebleu takes them) for multi-reference scoring. BLEU and
chrF come from sacrebleu and are returned with sacrebleu's signature string, which is what a
reader needs to reproduce a reported score; ROUGE comes with a signature of its own.
"""

import re
from collections.abc import Iterable, Sequence

from sacrebleu.metrics import BLEU, CHRF

METRICS = ("bleu", "bleu1", "bleu2", "chrf", "rouge", "exact", "distinct")

_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
_FRACTIONS = ("exact_match", "distinct1", "distinct2")  # 0-1, not percentages
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

References = Sequence[str] | Sequence[Sequence[str]]  # one stream, or several


def reference_streams(refs: References) -> list[list[str]]:
    """The reference streams of ``refs``: ``[refs]`` for one reference per hypothesis."""
    if refs and isinstance(refs[0], str):
        return [list(refs)]  # type: ignore[arg-type]
    return [list(stream) for stream in refs]


def _check_pairs(hyps: list[str], refs: References) -> list[list[str]]:
    """Reject inputs that cannot be scored pairwise; returns the reference streams.

    Args:
        hyps: Hypothesis strings.
        refs: Reference strings, one per hypothesis, or several such streams.

    Raises:
        ValueError: If there are no hypotheses or a stream's length differs from theirs.
    """
    streams = reference_streams(refs)
    for stream in streams or [[]]:
        if len(hyps) != len(stream):
            raise ValueError(
                f"cannot score {len(hyps)} hypotheses against {len(stream)} references; "
                "each hypothesis needs exactly one reference"
                + (" in every reference stream" if len(streams) > 1 else "")
            )
    if not hyps:
        raise ValueError("cannot score an empty list of hypotheses")
    return streams


def bleu(hyps: list[str], refs: References) -> tuple[float, str]:
    """Corpus BLEU with sacrebleu's defaults (13a tokenization, cased, exp smoothing).

    Args:
        hyps: Detokenized hypothesis strings.
        refs: Detokenized reference strings, one per hypothesis, or several such streams.

    Returns:
        The BLEU score (0-100) and sacrebleu's signature, e.g.
        ``"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"``.

    Raises:
        ValueError: If the lists are empty or differ in length.
    """
    return _corpus_score(BLEU(), hyps, refs)


def bleu_n(hyps: list[str], refs: References, order: int) -> tuple[float, str]:
    """Corpus BLEU with uniform weights over 1- to ``order``-grams (BLEU-1, BLEU-2).

    Dialogue papers report BLEU-1/2 as fractions (0.336); this is sacrebleu's score with
    ``max_ngram_order=order``, brevity penalty included, on the same 0-100 scale as
    :func:`bleu` (33.6). The signature gains ``ngram:order``.

    Raises:
        ValueError: If there are no hypotheses or the lengths differ.
    """
    score, signature = _corpus_score(BLEU(max_ngram_order=order), hyps, refs)
    return score, f"{signature}|ngram:{order}"


def distinct(hyps: list[str], n: int) -> float:
    """Distinct-n: distinct n-grams over all n-grams of the hypotheses (corpus level).

    Hypotheses are split into words by sacrebleu's 13a tokenizer (the one BLEU uses), so
    punctuation counts as words; n-grams never cross hypotheses. A fraction between 0 and
    1; 0 when no hypothesis has ``n`` words.

    Raises:
        ValueError: If there are no hypotheses or ``n < 1``.
    """
    if not hyps:
        raise ValueError("no hypotheses to score")
    if n < 1:
        raise ValueError(f"distinct-n needs n >= 1, got {n}")
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()
    seen: set[tuple[str, ...]] = set()
    total = 0
    for hyp in hyps:
        words = tokenize(hyp.strip()).split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        seen.update(grams)
        total += len(grams)
    return len(seen) / total if total else 0.0


def chrf(hyps: list[str], refs: References) -> tuple[float, str]:
    """Corpus chrF with sacrebleu's defaults (character 6-grams, beta 2, no word n-grams).

    Args:
        hyps: Detokenized hypothesis strings.
        refs: Detokenized reference strings, one per hypothesis, or several such streams.

    Returns:
        The chrF score (0-100) and sacrebleu's signature string.

    Raises:
        ValueError: If the lists are empty or differ in length.
    """
    return _corpus_score(CHRF(), hyps, refs)


def _corpus_score(metric, hyps: list[str], refs: References) -> tuple[float, str]:
    """Score with a fresh sacrebleu metric (they cache state such as the signature)."""
    streams = _check_pairs(hyps, refs)
    return metric.corpus_score(hyps, streams).score, str(metric.get_signature())


def rouge(hyps: list[str], refs: References) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 over hypotheses, as summarization reports them.

    Uses rouge-score's default tokenizer with the Porter stemmer, as in the original
    ROUGE-1.5.5 script: text is lowercased and every character outside ``[a-z0-9]`` becomes a
    token boundary. For Latin-script languages this splits words at accented letters
    (``"Straße"`` -> ``"stra"``, ``"e"``), so scores stay meaningful and comparable with
    published ROUGE numbers but are not exact word-level scores. Text with no ASCII letters
    or digits at all (Chinese, Arabic, Cyrillic, ...) yields no tokens and scores 0;
    use chrF for such languages.

    With several reference streams each hypothesis takes, per ROUGE type, the F1 of its
    best reference (rouge-score's ``score_multi``). When some reference has several
    sentences, ``rougeLsum`` is added: ROUGE-L over sentences, split after ``.``, ``!``
    or ``?`` followed by a space.

    Args:
        hyps: Detokenized hypothesis strings.
        refs: Detokenized reference strings, one per hypothesis, or several such streams.

    Returns:
        ``{"rouge1": f, "rouge2": f, "rougeL": f}`` (and ``rougeLsum``), F1 scaled to 0-100.

    Raises:
        ValueError: If there are no hypotheses or the lengths differ.
    """
    streams = _check_pairs(hyps, refs)
    from rouge_score import rouge_scorer  # imported on use: it pulls in nltk and absl

    sentences = any(len(_SENTENCE_END.split(r.strip())) > 1 for s in streams for r in s)
    types = [*_ROUGE_TYPES, "rougeLsum"] if sentences else list(_ROUGE_TYPES)
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=True)
    totals = dict.fromkeys(types, 0.0)
    for i, hyp in enumerate(hyps):
        # rouge-score takes (target, prediction): the reference comes first; rougeLsum
        # reads one sentence a line.
        targets = [_sentence_lines(stream[i]) for stream in streams]
        scores = scorer.score_multi(targets, _sentence_lines(hyp))
        for name in types:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(hyps) for name, total in totals.items()}


def rouge_signature(refs: References) -> str:
    """How :func:`rouge` scored, for the output beside its numbers."""
    count = len(reference_streams(refs))
    return f"rouge-score|F1|stemmer:porter|nrefs:{count}|multi:max|lsum:split:.!?"


def _sentence_lines(text: str) -> str:
    return "\n".join(_SENTENCE_END.split(text.strip()))


def exact_match(hyps: list[str], refs: References) -> float:
    """Fraction of hypotheses identical to a reference, ignoring surrounding whitespace.

    Args:
        hyps: Detokenized hypothesis strings.
        refs: Detokenized reference strings, one per hypothesis, or several such streams
            (a hypothesis matching any of its references counts).

    Returns:
        A fraction between 0 and 1 (not a percentage).

    Raises:
        ValueError: If there are no hypotheses or the lengths differ.
    """
    streams = _check_pairs(hyps, refs)
    matches = sum(
        any(hyp.strip() == stream[i].strip() for stream in streams) for i, hyp in enumerate(hyps)
    )
    return matches / len(hyps)


def compute(
    hyps: list[str], refs: References, metrics: Iterable[str] = ("bleu",)
) -> dict[str, float | str]:
    """Score hypotheses with several metrics at once.

    Args:
        hyps: Detokenized hypothesis strings.
        refs: Detokenized reference strings, one per hypothesis, or several such streams.
        metrics: Names from :data:`METRICS`. A single name given as a plain string is
            accepted as one metric.

    Returns:
        A flat dict, in the order the metrics were named: ``bleu`` and ``bleu_signature``,
        ``bleu1``/``bleu2`` with their signatures, ``chrf`` and ``chrf_signature``,
        ``rouge1``/``rouge2``/``rougeL`` (``rougeLsum`` for multi-sentence references) and
        ``rouge_signature``, ``exact_match``, ``distinct1``/``distinct2`` (of the
        hypotheses alone).

    Raises:
        ValueError: If a metric name is unknown, or the lists are empty or differ in length.
    """
    # A bare string would otherwise be iterated character by character.
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid metrics are {list(METRICS)}")
    _check_pairs(hyps, refs)

    scores: dict[str, float | str] = {}
    for name in names:
        if name == "bleu":
            scores["bleu"], scores["bleu_signature"] = bleu(hyps, refs)
        elif name in ("bleu1", "bleu2"):
            scores[name], scores[f"{name}_signature"] = bleu_n(hyps, refs, int(name[-1]))
        elif name == "distinct":
            scores["distinct1"], scores["distinct2"] = distinct(hyps, 1), distinct(hyps, 2)
        elif name == "chrf":
            scores["chrf"], scores["chrf_signature"] = chrf(hyps, refs)
        elif name == "rouge":
            scores.update(rouge(hyps, refs))
            scores["rouge_signature"] = rouge_signature(refs)
        elif name == "exact":
            scores["exact_match"] = exact_match(hyps, refs)
    return scores


def format_table(scores: dict[str, float | str]) -> str:
    """Render scores as an aligned plain-text table for the terminal.

    Numbers get two decimals, fractions (``exact_match``, ``distinct1``/``2``) four.
    String values such as sacrebleu signatures would break the column alignment, so they are
    listed on their own lines below the table.

    Args:
        scores: A dict as returned by :func:`compute`.

    Returns:
        The table, without a trailing newline.
    """
    numbers = {
        name: f"{value:.{4 if name in _FRACTIONS else 2}f}"
        for name, value in scores.items()
        if not isinstance(value, str)
    }
    texts = {name: value for name, value in scores.items() if isinstance(value, str)}
    name_width = max(len(name) for name in [*numbers, "metric"])
    value_width = max(len(value) for value in [*numbers.values(), "score"])

    # Values are right-aligned so that the decimal points of same-precision rows line up.
    lines = [f"{'metric':<{name_width}}  {'score':>{value_width}}"]
    lines.extend(f"{name:<{name_width}}  {value:>{value_width}}" for name, value in numbers.items())
    if texts:
        lines.append("")
        lines.extend(f"{name}: {value}" for name, value in texts.items())
    return "\n".join(lines)
