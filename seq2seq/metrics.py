"""Corpus-level evaluation metrics over detokenized text.

Every function here is pure: it takes hypothesis and reference strings (one reference per
hypothesis, already detokenized) and returns numbers, so translate, evaluate and training
validation all score text the same way. BLEU and chrF come from sacrebleu and are returned
with sacrebleu's signature string, which is what a reader needs to reproduce a reported score.
"""

from collections.abc import Iterable

from sacrebleu.metrics import BLEU, CHRF

METRICS = ("bleu", "chrf", "rouge", "exact")

_ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _check_pairs(hyps: list[str], refs: list[str]) -> None:
    """Reject inputs that cannot be scored pairwise.

    Args:
        hyps: Hypothesis strings.
        refs: Reference strings, one per hypothesis.

    Raises:
        ValueError: If either list is empty or their lengths differ.
    """
    if len(hyps) != len(refs):
        raise ValueError(
            f"cannot score {len(hyps)} hypotheses against {len(refs)} references; "
            "each hypothesis needs exactly one reference"
        )
    if not hyps:
        raise ValueError("cannot score an empty list of hypotheses")


def bleu(hyps: list[str], refs: list[str]) -> tuple[float, str]:
    """Corpus BLEU with sacrebleu's defaults (13a tokenization, cased, exp smoothing).

    Args:
        hyps: Detokenized hypothesis strings.
        refs: Detokenized reference strings, one per hypothesis.

    Returns:
        The BLEU score (0-100) and sacrebleu's signature, e.g.
        ``"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"``.

    Raises:
        ValueError: If the lists are empty or differ in length.
    """
    return _corpus_score(BLEU(), hyps, refs)


def chrf(hyps: list[str], refs: list[str]) -> tuple[float, str]:
    """Corpus chrF with sacrebleu's defaults (character 6-grams, beta 2, no word n-grams).

    Args:
        hyps: Detokenized hypothesis strings.
        refs: Detokenized reference strings, one per hypothesis.

    Returns:
        The chrF score (0-100) and sacrebleu's signature string.

    Raises:
        ValueError: If the lists are empty or differ in length.
    """
    return _corpus_score(CHRF(), hyps, refs)


def _corpus_score(metric, hyps: list[str], refs: list[str]) -> tuple[float, str]:
    """Score with a fresh sacrebleu metric (they cache state such as the signature)."""
    _check_pairs(hyps, refs)
    return metric.corpus_score(hyps, [refs]).score, str(metric.get_signature())


def rouge(hyps: list[str], refs: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F1 over hypothesis/reference pairs.

    Uses rouge-score's default tokenizer with the Porter stemmer, as in the original
    ROUGE-1.5.5 script: text is lowercased and every character outside ``[a-z0-9]`` becomes a
    token boundary. For Latin-script languages this splits words at accented letters
    (``"Straße"`` -> ``"stra"``, ``"e"``), so scores stay meaningful and comparable with
    published ROUGE numbers but are not exact word-level scores. Text with no ASCII letters
    or digits at all (Chinese, Arabic, Cyrillic, ...) yields no tokens and scores 0;
    use chrF for such languages.

    Args:
        hyps: Detokenized hypothesis strings.
        refs: Detokenized reference strings, one per hypothesis.

    Returns:
        ``{"rouge1": f, "rouge2": f, "rougeL": f}`` with each F1 scaled to 0-100.

    Raises:
        ValueError: If the lists are empty or differ in length.
    """
    _check_pairs(hyps, refs)
    from rouge_score import rouge_scorer  # imported on use: it pulls in nltk and absl

    scorer = rouge_scorer.RougeScorer(list(_ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(_ROUGE_TYPES, 0.0)
    for hyp, ref in zip(hyps, refs, strict=True):
        # rouge-score takes (target, prediction): the reference comes first.
        scores = scorer.score(ref, hyp)
        for name in _ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(hyps) for name, total in totals.items()}


def exact_match(hyps: list[str], refs: list[str]) -> float:
    """Fraction of hypotheses identical to their reference, ignoring surrounding whitespace.

    Args:
        hyps: Detokenized hypothesis strings.
        refs: Detokenized reference strings, one per hypothesis.

    Returns:
        A fraction between 0 and 1 (not a percentage).

    Raises:
        ValueError: If the lists are empty or differ in length.
    """
    _check_pairs(hyps, refs)
    matches = sum(hyp.strip() == ref.strip() for hyp, ref in zip(hyps, refs, strict=True))
    return matches / len(hyps)


def compute(
    hyps: list[str], refs: list[str], metrics: Iterable[str] = ("bleu",)
) -> dict[str, float | str]:
    """Score hypotheses with several metrics at once.

    Args:
        hyps: Detokenized hypothesis strings.
        refs: Detokenized reference strings, one per hypothesis.
        metrics: Names from :data:`METRICS`. A single name given as a plain string is
            accepted as one metric.

    Returns:
        A flat dict, in the order the metrics were named: ``bleu`` and ``bleu_signature``,
        ``chrf`` and ``chrf_signature``, ``rouge1``/``rouge2``/``rougeL``, ``exact_match``.

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
        elif name == "chrf":
            scores["chrf"], scores["chrf_signature"] = chrf(hyps, refs)
        elif name == "rouge":
            scores.update(rouge(hyps, refs))
        else:
            scores["exact_match"] = exact_match(hyps, refs)
    return scores


def format_table(scores: dict[str, float | str]) -> str:
    """Render scores as an aligned plain-text table for the terminal.

    Numbers get two decimals, ``exact_match`` four (it is a fraction, not a percentage).
    String values such as sacrebleu signatures would break the column alignment, so they are
    listed on their own lines below the table.

    Args:
        scores: A dict as returned by :func:`compute`.

    Returns:
        The table, without a trailing newline.
    """
    numbers = {
        name: f"{value:.{4 if name == 'exact_match' else 2}f}"
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
