"""``seq2seq demo``: the built-in date task, trained on the CPU in a few minutes.

A GRU encoder-decoder with Bahdanau attention learns to turn human-written dates
("Wednesday, March 3, 2021", "3rd of march 2021", "03/03/21") into ISO ``2021-03-03``,
character by character. The same settings are kept as ``examples/dates.yaml``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from seq2seq.api import Seq2Seq
from seq2seq.config import from_dict
from seq2seq.data.prepare import load_split
from seq2seq.viz import plot_attention

DEMO_CONFIG = {
    "data": {"task": "dates", "task_size": 20000, "tokenizer": "char"},
    "model": {
        "cell": "gru",
        "emb_dim": 64,
        "hidden_dim": 128,
        "bidirectional": True,
        "attention": "bahdanau",
        "dropout": 0.1,
    },
    "train": {
        "lr": 3e-3,
        "batch_tokens": 3000,
        "valid_every": 200,
        "log_every": 50,
        "valid_bleu": False,
        "max_steps": 1000,
        "max_time": 240.0,
    },
    "decode": {"max_len_a": 0.0, "max_len_b": 14},
}


def run_demo(out: Path, max_time: float = 240.0) -> dict:
    """Train, print samples and scores, write ``metrics.json`` and ``attention.png``.

    Returns:
        The test-split metrics.
    """
    raw = json.loads(json.dumps(DEMO_CONFIG))
    raw["train"]["max_time"] = max_time
    model = Seq2Seq(from_dict(raw))
    shutil.rmtree(out / "run", ignore_errors=True)  # the demo's own directory: start afresh
    model.fit(out=out / "run")
    test = load_split(model.config.data, "test")
    outputs = model.translate(test.src[:300], attention=True)
    scores = model.evaluate(test, metrics=("exact", "bleu", "chrf"))
    print("\nsample conversions (held-out test dates):")
    for src, ref, hyp in list(zip(test.src, test.tgt, outputs, strict=False))[:8]:
        mark = "ok " if hyp.text == ref else "ERR"
        print(f"  {mark} {src:32s} -> {hyp.text}   (reference {ref})")
    print(
        f"\nexact match {scores['exact_match']:.4f}   BLEU {scores['bleu']:.2f}   "
        f"chrF {scores['chrf']:.2f}   on {len(test.src)} test dates"
    )
    example = max(outputs[:20], key=lambda t: len(t.src_tokens))
    plot_attention(
        example.attention,
        example.src_tokens,
        example.out_tokens,
        out / "attention.png",
        title=f"attention: {''.join(example.src_tokens[:-1])}",
    )
    metrics = {k: v for k, v in scores.items() if not k.endswith("signature")}
    metrics.update(test_sentences=len(test.src), bleu_signature=scores["bleu_signature"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'metrics.json'} and {out / 'attention.png'}; model in {out / 'run'}")
    return metrics
