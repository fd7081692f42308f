"""Translate a test set with any engine and score it: one function for the API and the CLI."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from seq2seq import metrics as metrics_lib
from seq2seq.errors import ConfigError, DataError
from seq2seq.inference.engine import Engine, translate_texts


@dataclass
class Evaluation:
    """The scores (``bleu``, ``bleu_signature``, ``chrf``, ...) and the outputs scored."""

    scores: dict[str, float | str]
    hypotheses: list[str]


def check_metrics(names: Iterable[str]) -> list[str]:
    """The metric names as a list, checked before any decoding.

    Raises:
        ConfigError: an unknown name or none at all.
    """
    names = [names] if isinstance(names, str) else [n.strip() for n in names if n.strip()]
    unknown = sorted(set(names) - set(metrics_lib.METRICS))
    if unknown or not names:
        raise ConfigError(
            f"metrics: unknown {', '.join(unknown) or 'empty list'}; "
            f"choose from {','.join(metrics_lib.METRICS)}"
        )
    return names


def check_aligned(sources: list[str], refs: list[str], src_name: str, ref_name: str) -> None:
    """Raises DataError unless every source has its reference."""
    if len(sources) != len(refs):
        raise DataError(f"{src_name} has {len(sources)} lines but {ref_name} has {len(refs)}")


def evaluate(
    engine: Engine,
    sources: list[str],
    refs: metrics_lib.References,
    metrics: Iterable[str] = ("bleu", "chrf"),
    *,
    progress: bool = False,
    tgt_lang: str | None = None,
    task: str | None = None,
    rendered: bool = False,
) -> Evaluation:
    """Translate ``sources`` with ``engine`` and score the outputs against ``refs``: one
    reference per source, or several such streams (multi-reference BLEU, chrF, ROUGE and
    exact match).

    ``tgt_lang``/``task`` tag raw sources as the engine's run needs (see
    :meth:`~seq2seq.inference.engine.PhasedEngine.render`); ``rendered`` sources are the
    model's input already (a config's split, tags included).

    Raises:
        ConfigError: an unknown metric.
        DataError: sources and references differ in number, or there are none.
    """
    names = check_metrics(metrics)
    for stream in metrics_lib.reference_streams(refs):
        check_aligned(sources, stream, "the sources", "the references")
    if not rendered:
        sources = engine.render(sources, tgt_lang=tgt_lang, task=task)
    hyps = [t.text for t in translate_texts(engine, sources, progress=progress)]
    try:
        return Evaluation(metrics_lib.compute(hyps, refs, names), hyps)
    except ValueError as err:
        raise DataError(str(err)) from None
