"""Lexically constrained beam search against plain beam search: speed, BLEU, constraints met.

    python bench/constraints.py RUN_DIR [--n 200] [--beam 5] [--src F --ref F] [--json]

Takes the first ``--n`` test sentences (the run's ``data.test`` unless ``--src``/``--ref``
are given) and gives each one or two phrases of its reference, alternately: content
words (alphabetic, at least 4 letters, not in a small English stopword list, the longest
first), standing in for the reference's nouns, that the run's target vocabulary can
represent. Then it decodes them with beam search, unconstrained and constrained, one
after the other in this process (after ``--warmup`` untimed sentences of each), and
prints sentences/s, target tokens/s, BLEU and the share of outputs containing all of
their phrases (as text), and the constrained/unconstrained speed ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from seq2seq.cli import at_least
from seq2seq.data.corpus import read_lines
from seq2seq.data.vocab import UNK
from seq2seq.devices import cpu_bf16_summary
from seq2seq.errors import guarded
from seq2seq.inference import Translator
from seq2seq.metrics import bleu
from seq2seq.rundir import RunDir

STOPWORDS = set(
    """a an the and or but of in on at to for with from by into onto over under near
    his her their its this that these those there here while where when what which who
    some many several other another each every both one two three four five very just
    is are was were be been being has have had does did doing not no yes as than then
    about above below between behind front next down up out off through during after
    before again further once only own same so too can will should would could""".split()
)


def phrases_of(reference: str, count: int, translator: Translator) -> list[str]:
    """Up to ``count`` content words of ``reference`` that the target side can represent."""
    words = [w.strip(".,;:!?\"'()") for w in reference.split()]
    chosen: list[str] = []
    for word in sorted(dict.fromkeys(words), key=len, reverse=True):
        if len(chosen) == count:
            break
        if len(word) < 4 or not word.isalpha() or word.lower() in STOPWORDS:
            continue
        if UNK not in translator.tgt_codec.encode(word):
            chosen.append(word)
    return chosen


def timed(translator: Translator, texts: list[str], constraints) -> tuple[list[str], float, int]:
    started = time.perf_counter()
    results = translator.translate(texts, constraints=constraints)
    seconds = time.perf_counter() - started
    tokens = sum(len(translator.tgt_codec.encode(r.text)) + 1 for r in results)
    return [r.text for r in results], seconds, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory (its best checkpoint)")
    parser.add_argument("--src", help="source sentences (default: the run's data.test)")
    parser.add_argument("--ref", help="references (default: the run's data.test)")
    parser.add_argument("--n", type=at_least(1), default=200, help="sentences (default 200)")
    parser.add_argument("--beam", type=at_least(1), default=5, help="beam size (default 5)")
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch threads")
    parser.add_argument("--warmup", type=at_least(0), default=20, help="untimed sentences first")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if bool(args.src) != bool(args.ref):
        parser.error("--src and --ref go together (or neither: the run's data.test)")
    torch.set_num_threads(args.threads)
    if args.src and args.ref:
        sources, references = read_lines(args.src), read_lines(args.ref)
    else:
        cfg = RunDir(args.run).config()
        if not cfg.data.test:
            sys.exit(f"{args.run}: no data.test in its config; pass --src and --ref")
        sources = read_lines(f"{cfg.data.test}.{cfg.data.src_lang}")
        references = read_lines(f"{cfg.data.test}.{cfg.data.tgt_lang}")
    translator = Translator.from_run(args.run, device="cpu").configure(
        method="beam", beam_size=args.beam
    )
    texts, refs, wanted = [], [], []
    for src, ref in zip(sources, references, strict=True):
        phrases = phrases_of(ref, 1 + len(texts) % 2, translator)
        if src.strip() and phrases:
            texts.append(src)
            refs.append(ref)
            wanted.append(phrases)
        if len(texts) == args.n:
            break
    for constraints in (None, wanted):  # warm-up, untimed
        translator.translate(
            texts[: args.warmup], constraints=constraints and wanted[: args.warmup]
        )
    rows = {}
    for name, constraints in (("beam", None), ("constrained", wanted)):
        outputs, seconds, tokens = timed(translator, texts, constraints)
        met = sum(
            all(p in out for p in phrases) for out, phrases in zip(outputs, wanted, strict=True)
        )
        rows[name] = {
            "sent_per_s": len(texts) / seconds,
            "tgt_tok_per_s": tokens / seconds,
            "bleu": bleu(outputs, refs)[0],
            "all_constraints_met": met / len(texts),
        }
    result = {
        "sentences": len(texts),
        "phrases": sum(len(w) for w in wanted),
        "beam": args.beam,
        "threads": args.threads,
        "cpu": cpu_bf16_summary(),
        "runs": rows,
        "speed_ratio": rows["constrained"]["sent_per_s"] / rows["beam"]["sent_per_s"],
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(result["cpu"])
    print(
        f"{len(texts)} sentences, {result['phrases']} phrases from their references, "
        f"beam {args.beam}, {args.threads} threads"
    )
    print(f"{'mode':<13}{'sent/s':>9}{'tgt tok/s':>11}{'BLEU':>8}{'all met':>9}")
    for name, r in rows.items():
        print(
            f"{name:<13}{r['sent_per_s']:>9.1f}{r['tgt_tok_per_s']:>11.0f}{r['bleu']:>8.2f}"
            f"{r['all_constraints_met']:>9.1%}"
        )
    print(f"constrained / unconstrained speed: {result['speed_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(Path(__file__).name, main))
