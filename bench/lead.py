"""LEAD-n summarization baseline: the first n units of each source, scored like a model.

    python bench/lead.py ../shared/data/samsum/valid.src --ref ../shared/data/samsum/valid.tgt \
        --n 3 --sep "<eou>" [--json]
    python bench/lead.py ../shared/data/aeslc/valid.src --ref ../shared/data/aeslc/valid.ann0 \
        --ref ../shared/data/aeslc/valid.ann1 --n 1

Units are the pieces between ``--sep`` (dialogue turns in SAMSum, where the separator is
dropped from the output), or sentences when no separator is given. The summaries are scored
with the toolkit's own metrics (ROUGE-1/2/L F1 with stemming; several ``--ref`` are scored
as the maximum over references), so the numbers compare directly with ``seq2seq evaluate``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from seq2seq import metrics
from seq2seq.cli import at_least
from seq2seq.data.corpus import read_lines
from seq2seq.errors import guarded

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def lead(text: str, n: int, sep: str | None) -> str:
    """The first ``n`` units of ``text``: ``sep``-separated pieces, or sentences."""
    units = text.split(sep) if sep else _SENTENCE_END.split(text)
    return " ".join(unit.strip() for unit in units[:n] if unit.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="one source text a line")
    parser.add_argument("--ref", action="append", required=True, help="references (repeatable)")
    parser.add_argument("--n", type=at_least(1), default=3, help="units kept (default 3)")
    parser.add_argument("--sep", default=None, help="unit separator (default: sentences)")
    parser.add_argument("--metrics", default="rouge", help="comma-separated (default rouge)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    summaries = [lead(text, args.n, args.sep) for text in read_lines(args.src)]
    refs = [read_lines(path) for path in args.ref]
    try:
        scores = metrics.compute(summaries, refs, args.metrics.split(","))
    except ValueError as err:
        parser.error(str(err))
    if args.json:
        print(json.dumps(scores))
    else:
        print(metrics.format_table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(guarded(Path(__file__).name, main))
