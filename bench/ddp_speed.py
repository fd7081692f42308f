"""The cost of training in several processes: N ranks x T threads vs 1 process x N*T threads.

    python bench/ddp_speed.py bench/configs/joeynmt-match.yaml [--ranks 2] [--steps 60] [--json]

Runs ``bench/train_speed.py`` twice on the same config, one after the other: once as one
process with ``ranks`` threads, once under ``torchrun --standalone`` as ``ranks``
processes of one thread each (gloo on the CPU). Each rank takes ``train.batch_tokens``
per step, so the torchrun run trains ``ranks`` times the tokens per step; the fair
single-process match is ``train.accumulate=ranks``, which is what the first run uses.
Target tokens/s are of all ranks together; peak RSS is rank 0's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from seq2seq.cli import at_least
from seq2seq.config import load_config
from seq2seq.errors import guarded

HERE = Path(__file__).resolve().parent


def _run(command: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"ddp_speed: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(config: str, overrides: list[str], ranks: int, steps: int, warmup: int) -> dict:
    script = str(HERE / "train_speed.py")
    options = ["--json", f"--steps={steps}", f"--warmup={warmup}"]
    single = _run(
        [
            sys.executable,
            script,
            config,
            *overrides,
            f"train.threads={ranks}",
            f"train.accumulate={ranks}",
            *options,
        ],
        ranks,
    )
    with tempfile.TemporaryDirectory() as shared:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        ddp = _run(
            [
                *launcher,
                f"--nproc_per_node={ranks}",
                script,
                config,
                *overrides,
                "train.threads=1",
                *options,
                f"--run-dir={shared}",
            ],
            1,
        )
    return {
        "single": single,
        "ddp": ddp,
        "ddp_over_single": ddp["tgt_tok_per_s"] / single["tgt_tok_per_s"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--ranks", type=at_least(1), default=2, help="processes (default 2)")
    parser.add_argument("--steps", type=at_least(1), default=60, help="timed steps (default 60)")
    parser.add_argument(
        "--warmup", type=at_least(0), default=10, help="untimed steps first (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    load_config(args.config, args.overrides)  # a bad config is named here, not by a child
    result = measure(args.config, args.overrides, args.ranks, args.steps, args.warmup)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'setup':<34}{'tgt tok/s':>12}{'src+tgt tok/s':>15}{'peak RSS MB':>13}")
    for name, row in (
        (f"1 process x {args.ranks} threads, accumulate {args.ranks}", result["single"]),
        (f"{args.ranks} ranks x 1 thread (torchrun, gloo)", result["ddp"]),
    ):
        print(
            f"{name:<34}{row['tgt_tok_per_s']:>12,.0f}{row['src_tgt_tok_per_s']:>15,.0f}"
            f"{row['peak_rss_mb']:>13,.0f}"
        )
    print(f"ranks / single: {result['ddp_over_single']:.3f} ({args.steps} timed steps each)")
    return 0


if __name__ == "__main__":
    sys.exit(guarded(Path(__file__).name, main))
