"""Training throughput of a config: target tokens/s, source+target tokens/s, padding, memory.

    python bench/train_speed.py bench/configs/joeynmt-match.yaml [--steps 60] [--json] [k=v ...]

Runs the real training step (the Trainer's, with the config's batching, precision and
accumulation) for ``--warmup`` steps, then times ``--steps`` steps. Peak RSS is the
whole process's, data loading included, as /usr/bin/time reports for other toolkits.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import torch

from seq2seq.config import load_config
from seq2seq.data.prepare import load_split
from seq2seq.rundir import RunDir
from seq2seq.training.driver import prepare
from seq2seq.training.loop import peak_rss_mb


def measure(config: str, overrides: list[str], steps: int, warmup: int) -> dict:
    cfg = load_config(config, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        # The training driver's own preparation (seeds, tokenizers, data, model), no validation.
        trainer = prepare(cfg, RunDir(tmp), load_split(cfg.data, "train"))
        model, device = trainer.model, trainer.device
        model.train()
        for _ in range(warmup):
            trainer.step()
        tgt = src = padded = 0
        started = time.perf_counter()
        for _ in range(steps):
            result = trainer.step()
            tgt += result.tgt_tokens
            src += result.src_tokens
            padded += result.padded_positions
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return {
        "tgt_tok_per_s": tgt / seconds,
        "src_tgt_tok_per_s": (src + tgt) / seconds,
        # Both token counts include each sentence's EOS, as the padded positions do.
        "padding_fraction": 1.0 - (src + tgt) / padded,
        "peak_rss_mb": peak_rss_mb(),
        "steps": steps,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "precision": trainer.precision,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--steps", type=int, default=60, help="timed steps (default 60)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = measure(args.config, args.overrides, args.steps, args.warmup)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'metric':<22}{'value':>14}")
    for key in ("tgt_tok_per_s", "src_tgt_tok_per_s", "padding_fraction", "peak_rss_mb"):
        print(
            f"{key:<22}{result[key]:>14.3f}"
            if key == "padding_fraction"
            else f"{key:<22}{result[key]:>14,.0f}"
        )
    print(
        f"({result['steps']} steps in {result['seconds']:.1f} s after {args.warmup} warm-up, "
        f"{result['threads']} threads, {result['precision']}, {result['params_m']:.1f}M params)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
