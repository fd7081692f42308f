"""Memory of training on a corpus far larger than memory (streamed) vs on Multi30k.

    python bench/stream_memory.py [--lines 20000000] [--steps 200] [--dir DIR] [--json]

Writes a synthetic German-English corpus of ``--lines`` line pairs into ``--dir``
(generated here, nothing is downloaded: sentences of 4-24 words drawn by frequency from
Multi30k's German training text, each target word a fixed English word of its source
word; reused when the files are there already), then trains the matched model
(``bench/configs/joeynmt-match.yaml``, its pretrained SentencePiece model) for
``--steps`` updates twice, one after the other, each in a process of its own:

- ``stream``: on the synthetic corpus with ``data.stream=true`` (survey, encoding into
  the memory-mapped cache, then training), and
- ``multi30k``: on Multi30k's 29k training pairs, read into memory as usual.

For each it prints the process's peak RSS (``wait4``'s ``ru_maxrss``: everything the
process touched, the mapped cache pages included), the time from the start to the cache
being ready, the training time and target tokens/s. Validation is off in both. Needs
``../shared/data/multi30k`` and ``../shared/bench/spm8k.model`` beside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seq2seq.cli import at_least
from seq2seq.errors import guarded

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "configs" / "joeynmt-match.yaml"
MULTI30K = HERE.parent.parent / "shared" / "data" / "multi30k"
_BLOCK = 200_000  # lines generated at a time


def make_corpus(prefix: Path, lines: int, seed: int = 0) -> float:
    """Write ``prefix.de``/``prefix.en`` (``lines`` pairs) unless both are complete;
    returns the seconds it took (0 when reused)."""
    done = prefix.with_suffix(".done")
    if done.is_file() and done.read_text() == str(lines):
        return 0.0
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    de = _running_words(MULTI30K / "train.de")
    en = _running_words(MULTI30K / "train.en")
    # each German word type's English word, drawn by frequency
    types = np.unique(de)
    drawn = en[rng.integers(0, len(en), len(types))]
    translation = dict(zip(types.tolist(), drawn.tolist(), strict=True))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{prefix}.de", "w", encoding="utf-8") as f_de:
        with open(f"{prefix}.en", "w", encoding="utf-8") as f_en:
            for start in range(0, lines, _BLOCK):
                n = min(_BLOCK, lines - start)
                lengths = rng.integers(4, 25, size=n)
                words = rng.integers(0, len(de), size=int(lengths.sum()))
                ends = np.cumsum(lengths)
                de_words = de[words].tolist()
                en_words = [translation[w] for w in de_words]
                bounds = zip([0, *ends[:-1].tolist()], ends.tolist(), strict=True)
                rows = [(a, b) for a, b in bounds]
                f_de.write("".join(" ".join(de_words[a:b]) + "\n" for a, b in rows))
                f_en.write("".join(" ".join(en_words[a:b]) + "\n" for a, b in rows))
    done.write_text(str(lines))
    return time.perf_counter() - started


def _running_words(path: Path) -> np.ndarray:
    """Every word of the file in order (drawing from it draws words by their frequency)."""
    if not path.is_file():
        sys.exit(f"stream_memory: {path} not found (the shared Multi30k corpus)")
    return np.array(path.read_text(encoding="utf-8").split(), dtype=object)


def train(name: str, out: Path, overrides: list[str], steps: int, threads: int) -> dict:
    """Train in a process of its own; its peak RSS, timings and rate."""
    command = [
        sys.executable,
        "-m",
        "seq2seq",
        "train",
        str(CONFIG),
        "--out",
        str(out),
        *overrides,
        "data.valid=null",
        "data.test=null",
        "train.valid_bleu=false",
        "train.early_stop_metric=loss",
        f"train.max_steps={steps}",
        f"train.threads={threads}",
        "train.log_every=1000000",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(job.pid, 0)
    wall = time.perf_counter() - started
    stderr = job.stderr.read().decode() if job.stderr else ""
    if status:
        sys.exit(f"stream_memory: {' '.join(command)} failed:\n{stderr[-3000:]}")
    log = (out / "train.log").read_text(encoding="utf-8")
    trained = re.search(r"trained (\d+) steps in (\d+) s: (\d+) target tokens/s", log)
    pairs = re.search(r"model: [\d.]+M parameters; (\d+) training pairs", log)
    encoded = re.search(r"pairs encoded into the cache in (\d+) s", log)
    assert trained and pairs, log
    train_s = float(trained.group(2))
    return {
        "name": name,
        "pairs": int(pairs.group(1)),
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "wall_s": wall,
        "prepare_s": wall - train_s,  # start to first step: reading, survey, cache
        "encode_s": float(encoded.group(1)) if encoded else 0.0,
        "train_s": train_s,
        "tgt_tok_per_s": float(trained.group(3)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lines", type=at_least(1), default=20_000_000, help="synthetic line pairs"
    )
    parser.add_argument("--steps", type=at_least(1), default=200, help="updates of each run")
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch threads of each run")
    parser.add_argument("--dir", type=Path, help="where the corpus goes (kept; default: temp)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        corpus_dir = args.dir or Path(tmp)
        made = make_corpus(corpus_dir / "synthetic", args.lines)
        size = sum((corpus_dir / f"synthetic.{lang}").stat().st_size for lang in ("de", "en"))
        rows = [
            train(
                "stream",
                Path(tmp) / "run-stream",
                [
                    f"data.train={corpus_dir / 'synthetic'}",
                    "data.stream=true",
                ],
                args.steps,
                args.threads,
            ),
            train("multi30k", Path(tmp) / "run-multi30k", [], args.steps, args.threads),
        ]
    ratio = rows[0]["peak_rss_mb"] / rows[1]["peak_rss_mb"]
    result = {
        "lines": args.lines,
        "corpus_gb": size / 1e9,
        "generate_s": made,
        "steps": args.steps,
        "threads": args.threads,
        "runs": rows,
        "rss_ratio": ratio,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"synthetic corpus: {args.lines:,} line pairs, {size / 1e9:.2f} GB"
        + (f" (generated in {made:.0f} s)" if made else " (reused)")
    )
    header = ("run", "pairs", "peak RSS MB", "prepare s", "encode s", "train s", "tgt tok/s")
    print(f"{header[0]:<10}{header[1]:>12}" + "".join(f"{h:>13}" for h in header[2:]))
    for r in rows:
        print(
            f"{r['name']:<10}{r['pairs']:>12,}{r['peak_rss_mb']:>13,.0f}{r['prepare_s']:>13.0f}"
            f"{r['encode_s']:>13.0f}{r['train_s']:>13.0f}{r['tgt_tok_per_s']:>13,.0f}"
        )
    print(
        f"peak RSS stream / multi30k: {ratio:.2f}; {args.steps} updates each, "
        f"{args.threads} threads"
    )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(Path(__file__).name, main))
