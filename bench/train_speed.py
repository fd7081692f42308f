"""Training throughput of a config: target tokens/s, source+target tokens/s, padding, memory.

    python bench/train_speed.py bench/configs/joeynmt-match.yaml [--steps 60] [--json] [k=v ...]
    torchrun --standalone --nproc_per_node=2 bench/train_speed.py CONFIG --run-dir DIR \
        train.threads=1

Runs the real training step (the Trainer's, with the config's batching, precision and
accumulation) for ``--warmup`` steps, then times ``--steps`` steps. Peak RSS is the
whole process's, data loading included, as /usr/bin/time reports for other toolkits.
Under torchrun the ranks train together (as ``seq2seq train`` does there): the token
rates are of all ranks together, and rank 0 prints them (``--run-dir`` must then be one
directory all ranks see; ``bench/ddp_speed.py`` runs both ways and compares).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from seq2seq.config import load_config
from seq2seq.data.prepare import load_training
from seq2seq.devices import cpu_bf16_summary
from seq2seq.rundir import RunDir
from seq2seq.training.distributed import launched, process_group
from seq2seq.training.driver import prepare
from seq2seq.training.loop import peak_rss_mb


def measure(
    config: str, overrides: list[str], steps: int, warmup: int, run_dir: Path | None = None
) -> dict:
    """The rates of ``steps`` timed steps (rank 0's figures under torchrun)."""
    cfg = load_config(config, overrides)
    with contextlib.ExitStack() as stack:
        tmp = run_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        ranks = stack.enter_context(process_group(cfg.train.device, cfg.train.dist_timeout))
        # The training driver's own preparation (seeds, tokenizers, data, model), no validation.
        trainer = prepare(cfg, RunDir(tmp), load_training(cfg.data), ranks=ranks)
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
        src, padded = ranks.sum([src, padded])  # target tokens are all ranks' already
    return {
        "tgt_tok_per_s": tgt / seconds,
        "src_tgt_tok_per_s": (src + tgt) / seconds,
        # Both token counts include each sentence's EOS, as the padded positions do.
        "padding_fraction": 1.0 - (src + tgt) / padded,
        "peak_rss_mb": peak_rss_mb(),
        "steps": steps,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "processes": ranks.world,
        "rank": ranks.rank,
        "precision": trainer.precision,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "cpu_bf16": cpu_bf16_summary(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--steps", type=int, default=60, help="timed steps (default 60)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--run-dir", type=Path, help="where tokenizers and cache go (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    if launched() and args.run_dir is None:
        parser.error("under torchrun, give --run-dir: one directory every rank can read")
    result = measure(args.config, args.overrides, args.steps, args.warmup, args.run_dir)
    if result["rank"]:
        return 0
    if args.json:
        print(json.dumps(result))
        return 0
    print(result["cpu_bf16"])
    print(f"{'metric':<22}{'value':>14}")
    for key in ("tgt_tok_per_s", "src_tgt_tok_per_s", "padding_fraction", "peak_rss_mb"):
        print(
            f"{key:<22}{result[key]:>14.3f}"
            if key == "padding_fraction"
            else f"{key:<22}{result[key]:>14,.0f}"
        )
    print(
        f"({result['steps']} steps in {result['seconds']:.1f} s after {args.warmup} warm-up, "
        f"{result['processes']} x {result['threads']} threads, {result['precision']}, "
        f"{result['params_m']:.1f}M params)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
