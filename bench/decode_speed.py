"""Decoding speed and quality of a run, native modes against CTranslate2, in one process.

    python bench/decode_speed.py RUN [--modes greedy-fp32,beam5-ct2-int8,...] [--json]

For each mode, in a fresh process: sentences/s and target tokens/s over the test set (the
run's ``data.test``, or ``--src/--ref``), model loading and export excluded, plus its BLEU
and, for greedy modes, the share of outputs identical to ``greedy-fp32``. A mode is
``{greedy|beamK}-{fp32|bf16|int8|ct2-int8|ct2-fp32}``; the ``ct2`` modes decode the
run exported with ``seq2seq export`` (done here into a temporary directory unless
``--ct2 DIR`` names an export). Target tokens are counted the same way for every engine:
the output's subword tokens under the run's target tokenizer, plus EOS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from seq2seq.cli import at_least
from seq2seq.data.corpus import read_lines
from seq2seq.devices import cpu_bf16_summary
from seq2seq.errors import guarded
from seq2seq.inference import Translator
from seq2seq.metrics import bleu

DEFAULT_MODES = (
    "greedy-fp32,greedy-bf16,greedy-int8,greedy-ct2-int8,"
    "beam5-fp32,beam5-bf16,beam5-int8,beam5-ct2-int8"
)


def parse_mode(mode: str) -> tuple[dict, str]:
    """``beam5-int8`` -> (decode overrides, engine)."""
    search, _, arith = mode.partition("-")
    if search == "greedy":
        decode: dict = {"method": "greedy"}
    elif search.startswith("beam") and search[4:].isdigit():
        decode = {"method": "beam", "beam_size": int(search[4:])}
    else:
        raise SystemExit(f"unknown search in mode {mode!r}: use greedy or beamK")
    engine = "ctranslate2" if arith.startswith("ct2-") else "native"
    arith = arith.removeprefix("ct2-")
    if arith not in ("fp32", "bf16", "int8"):
        raise SystemExit(f"unknown arithmetic in mode {mode!r}: use fp32, bf16 or int8")
    if arith == "int8":
        decode["quantize"] = "int8"
    elif arith == "bf16":
        decode["precision"] = "bf16"
    return decode, engine


def make_translator(run: str, decode: dict, engine: str, export_dir: Path | None, threads: int):
    if engine == "native":
        return Translator.from_run(run, "best", "cpu", decode)
    from seq2seq.inference.ct2 import CTranslate2Translator

    return CTranslate2Translator.from_export(export_dir, decode, device="cpu", threads=threads)


def time_mode(translator, sources: list[str], warmup: int, repeat: int):
    translator.translate(sources[:warmup])
    best, outputs = float("inf"), []
    for _ in range(repeat):
        started = time.perf_counter()
        outputs = [t.text for t in translator.translate(sources)]
        best = min(best, time.perf_counter() - started)
    return best, outputs


def run_one(args) -> None:
    """Child process: decode the test set in one mode; outputs to --outputs, timing to stdout.

    Each mode runs in a fresh process, so no engine inherits another's threads (PyTorch's
    idle OpenMP workers spin and slow CTranslate2 down by several times) or memory.
    """
    torch.set_num_threads(args.threads)
    sources = load_test(args)[0]
    decode, engine = parse_mode(args.one)
    translator = make_translator(args.run, decode, engine, args.ct2, args.threads)
    seconds, outputs = time_mode(translator, sources, args.warmup, args.repeat)
    tokens = sum(len(translator.tgt_codec.encode(o)) + 1 for o in outputs)
    Path(args.outputs).write_text("".join(o + "\n" for o in outputs), encoding="utf-8")
    print(json.dumps({"seconds": seconds, "tokens": tokens}))


def measure(args) -> dict:
    sources, refs = load_test(args)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    plans = {mode: parse_mode(mode) for mode in modes}
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = Path(args.ct2) if args.ct2 else None
        if export_dir is None and any(e == "ctranslate2" for _, e in plans.values()):
            from seq2seq.inference.ct2 import export_ctranslate2

            export_dir = export_ctranslate2(args.run, Path(tmp) / "ct2")
        results, reference = {}, None
        for mode in plans:
            outputs, timing = _child(args, mode, export_dir, Path(tmp) / f"{mode}.txt")
            results[mode] = {
                "sent_per_s": len(sources) / timing["seconds"],
                "tgt_tok_per_s": timing["tokens"] / timing["seconds"],
                "bleu": bleu(outputs, refs)[0],
                "seconds": timing["seconds"],
            }
            if mode == "greedy-fp32":
                reference = outputs
            if mode.startswith("greedy") and reference is not None:
                same = sum(a == b for a, b in zip(outputs, reference, strict=True))
                results[mode]["same_as_greedy_fp32"] = same / len(sources)
            print(f"{mode}: {results[mode]}", file=sys.stderr)
    return results


def _child(args, mode: str, export_dir: Path | None, outputs: Path) -> tuple[list[str], dict]:
    command = [sys.executable, __file__, args.run, "--one", mode, "--outputs", str(outputs)]
    for flag in ("src", "ref", "threads", "warmup", "repeat"):
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    if export_dir is not None:
        command += ["--ct2", str(export_dir)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"mode {mode} failed:\n{done.stderr[-2000:]}")
    return read_lines(outputs), json.loads(done.stdout.strip().splitlines()[-1])


def load_test(args) -> tuple[list[str], list[str]]:
    if args.src and args.ref:
        return read_lines(args.src), read_lines(args.ref)
    from seq2seq.rundir import RunDir

    cfg = RunDir(args.run).config()
    if not cfg.data.test:
        raise SystemExit(f"{args.run}: no data.test in its config; pass --src and --ref")
    prefix = cfg.data.test
    return (
        read_lines(f"{prefix}.{cfg.data.src_lang}"),
        read_lines(f"{prefix}.{cfg.data.tgt_lang}"),
    )


def table(results: dict) -> str:
    ct2 = {k.split("-")[0]: v for k, v in results.items() if k.endswith("ct2-int8")}
    header = f"{'mode':<18} {'sent/s':>8} {'tgt tok/s':>10} {'BLEU':>6} {'vs ct2-int8':>11}"
    lines = [cpu_bf16_summary(), f"{header} {'=greedy':>8}"]
    for mode, r in results.items():
        base = ct2.get(mode.split("-")[0])
        ratio = f"{r['tgt_tok_per_s'] / base['tgt_tok_per_s']:.2f}x" if base else "-"
        same = r.get("same_as_greedy_fp32")
        lines.append(
            f"{mode:<18} {r['sent_per_s']:>8.1f} {r['tgt_tok_per_s']:>10.0f} {r['bleu']:>6.2f} "
            f"{ratio:>11} {'' if same is None else f'{same:.1%}':>8}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory (its best checkpoint is decoded)")
    parser.add_argument("--modes", default=DEFAULT_MODES, help="comma-separated modes")
    parser.add_argument("--ct2", help="an existing 'seq2seq export' directory of the run")
    parser.add_argument("--src", help="source sentences (default: the run's data.test)")
    parser.add_argument("--ref", help="references (default: the run's data.test)")
    parser.add_argument(
        "--threads", type=at_least(1), default=2, help="CPU threads for every engine"
    )
    parser.add_argument("--warmup", type=at_least(0), default=100, help="sentences decoded untimed")
    parser.add_argument(
        "--repeat", type=at_least(1), default=1, help="timed passes; the fastest counts"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child process: one mode
    parser.add_argument("--outputs", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if bool(args.src) != bool(args.ref):
        parser.error("--src and --ref go together (or neither: the run's data.test)")
    if args.one:
        run_one(args)
        return
    results = measure(args)
    if args.json:
        print(json.dumps({"cpu_bf16": cpu_bf16_summary(), "modes": results}, indent=2))
    else:
        print(table(results))


if __name__ == "__main__":
    sys.exit(guarded(Path(__file__).name, main))
