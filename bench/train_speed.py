"""Training throughput of a config: target tokens/s, source+target tokens/s, padding, memory.

    python bench/train_speed.py bench/configs/joeynmt-match.yaml [--steps 60] [--json] [k=v ...]
        [--compare floor,joeynmt] [--compare-seconds 120]
    torchrun --standalone --nproc_per_node=2 bench/train_speed.py CONFIG --run-dir DIR \
        train.threads=1

Runs the real training step (the Trainer's, with the config's batching, precision and
accumulation) for ``--warmup`` steps, then times ``--steps`` steps. Peak RSS is the
whole process's, data loading included, as /usr/bin/time reports for other toolkits.
Under torchrun the ranks train together (as ``seq2seq train`` does there): the token
rates are of all ranks together, and rank 0 prints them (``--run-dir`` must then be one
directory all ranks see; ``bench/ddp_speed.py`` runs both ways and compares).

``--compare`` then runs the yardsticks of ``../shared/bench`` one after the other, each
in a process of its own, with the same thread count: ``floor`` is the plain-PyTorch
training step of the same model (``floor.py --mode fp32``, or ``bf16`` when this run
trained in bf16), ``joeynmt`` trains JoeyNMT 2.3.0 on the same data and pieces
(``joeynmt/run.sh train SECONDS``, which installs it in its own venv the first time).
The table gives each one's target tokens/s and peak RSS, and this run's speed as a
multiple of theirs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from seq2seq.cli import at_least
from seq2seq.config import load_config
from seq2seq.data.prepare import load_training
from seq2seq.devices import cpu_bf16_summary
from seq2seq.errors import guarded
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


SHARED_BENCH = Path(__file__).resolve().parents[1].parent / "shared" / "bench"


def yardstick(name: str, seconds: float, threads: int, precision: str) -> dict:
    """Target tokens/s and peak RSS of ``floor`` or ``joeynmt`` (see the docstring)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if name == "floor":
        mode = "bf16" if precision == "bf16" else "fp32"
        argv = [sys.executable, str(SHARED_BENCH / "floor.py"), "--mode", mode, "--json"]
        argv += ["--seconds", str(seconds), "--threads", str(threads)]
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        line = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else ""
        return {**json.loads(line), "tool": f"floor.py --mode {mode}"} if line else _failed(done)
    with tempfile.TemporaryDirectory() as out:
        argv = ["bash", str(SHARED_BENCH / "joeynmt" / "run.sh"), "train", str(int(seconds)), out]
        done = subprocess.run(argv, capture_output=True, text=True, env={**env, "WARMUP": "400"})
    results = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not results:
        return _failed(done)
    return {**json.loads(results[-1][len("RESULT ") :]), "tool": "JoeyNMT 2.3.0"}


def _failed(done: subprocess.CompletedProcess) -> dict:
    sys.exit(f"{' '.join(done.args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--steps", type=at_least(1), default=60, help="timed steps (default 60)")
    parser.add_argument(
        "--warmup", type=at_least(0), default=10, help="untimed steps first (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--run-dir", type=Path, help="where tokenizers and cache go (default: a temporary one)"
    )
    parser.add_argument(
        "--compare",
        default="",
        help="comma-separated yardsticks run afterwards: floor, joeynmt (see above)",
    )
    parser.add_argument(
        "--compare-seconds", type=at_least(1.0), default=120.0, help="each yardstick's budget (120)"
    )
    args = parser.parse_intermixed_args(argv)  # key=value before or after the options
    if launched() and args.run_dir is None:
        parser.error("under torchrun, give --run-dir: one directory every rank can read")
    compare = [name for name in args.compare.split(",") if name]
    unknown = sorted(set(compare) - {"floor", "joeynmt"})
    if unknown:
        parser.error(f"--compare: unknown yardstick {', '.join(unknown)} (floor, joeynmt)")
    if compare and launched():
        parser.error("--compare runs in one process, not under torchrun")
    if compare and not SHARED_BENCH.is_dir():
        parser.error(f"--compare needs the yardsticks in {SHARED_BENCH}, which is missing")
    if args.run_dir is not None:
        try:
            args.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            parser.error(f"--run-dir: cannot create {args.run_dir}: {err.strerror}")
    result = measure(args.config, args.overrides, args.steps, args.warmup, args.run_dir)
    if result["rank"]:
        return 0
    result["compared"] = {
        name: yardstick(name, args.compare_seconds, result["threads"], result["precision"])
        for name in compare
    }
    for other in result["compared"].values():
        other["ours_x"] = result["tgt_tok_per_s"] / other["tgt_tok_per_s"]
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
    if result["compared"]:
        print(f"{'yardstick':<24}{'tgt tok/s':>11}{'peak RSS MB':>13}{'ours x':>8}")
        print(f"{'this run':<24}{result['tgt_tok_per_s']:>11,.0f}{result['peak_rss_mb']:>13,.0f}")
        for other in result["compared"].values():
            print(
                f"{other['tool']:<24}{other['tgt_tok_per_s']:>11,.0f}"
                f"{other['peak_rss_mb']:>13,.0f}{other['ours_x']:>8.2f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(Path(__file__).name, main))
