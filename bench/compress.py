"""Compressed models side by side: size, parameters, decoding speed and BLEU.

    python bench/compress.py RUN_DIR [--work DIR] [--finetune-steps 400]
        [--student-time 1200] [--threads 2] [--json]

Makes, in ``--work`` (default ``RUN_DIR-compress``), each compressed form of the run's
best model that is not there yet, then measures every one on the run's test set
(``data.test``) in this process, one after the other:

- ``model``: the run as trained; ``int8``: its linear layers quantized at load time;
- ``magnitude 50%`` / ``80%``: ``seq2seq prune --sparsity``, without and with
  ``--finetune-steps`` of fine-tuning;
- ``structured``: half the heads and half the feed-forward neurons of every layer
  (``seq2seq prune --method structured``), without and with fine-tuning; then the same
  with one decoder layer fewer (``--dec-layers``, the one validation loss misses least);
- ``distilled``: ``seq2seq distill`` of a student half the width (``hidden_dim`` and
  ``ff_dim`` halved), trained ``--student-time`` seconds on the teacher's beam outputs.

Size is the checkpoint file (the model's weights re-saved as checkpoints are saved
now, tied embeddings once; for int8, the bytes of its int8 and float weights, made
at load time). Speed is sentences/s over the test set, greedy and beam 5, after a
warm-up; BLEU is sacreBLEU of the beam-5 outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from seq2seq.checkpoint import load_checkpoint, save_checkpoint
from seq2seq.cli import at_least
from seq2seq.data.corpus import read_lines
from seq2seq.devices import cpu_bf16_summary
from seq2seq.errors import guarded
from seq2seq.inference import Translator
from seq2seq.metrics import bleu
from seq2seq.models.prune import prunable
from seq2seq.rundir import RunDir
from seq2seq.training.compress import Pruning, distill, prune_run


def made(work: Path, name: str, make) -> Path:
    """``work/name``, made by ``make(path)`` unless a finished run is there already.

    Exits when one is there unfinished (its training interrupted): measuring it would
    misreport it."""
    path = work / name
    run = RunDir(path)
    if run.last.is_file():
        if load_checkpoint(run.last).trainer["progress"]["stopped"] in ("", "interrupted"):
            sys.exit(
                f"{path}: its training did not finish; resume it (seq2seq train "
                f"{run.config_file} --out {path} --resume) or remove it"
            )
    elif not run.best.is_file():
        make(path)
    return path


def variants(
    run: Path, work: Path, steps: int, student_time: float, threads: int
) -> dict[str, tuple]:
    """Name -> (run directory, decode overrides) of every form measured."""
    own = [f"train.threads={threads}"]
    out: dict[str, tuple] = {"model": (run, {}), "int8": (run, {"quantize": "int8"})}
    for sparsity in (0.5, 0.8):
        pct = f"{sparsity:.0%}"
        for tuned in (0, steps):
            name = f"magnitude {pct}" + (f" +{tuned} ft" if tuned else "")
            pruning = Pruning("magnitude", sparsity, finetune_steps=tuned)
            slug = f"magnitude-{int(sparsity * 100)}-ft{tuned}"
            out[name] = (
                made(work, slug, lambda p, pr=pruning: prune_run(run, p, pr, overrides=own)),
                {},
            )
    cfg = RunDir(run).config()
    layers = cfg.model.dec_layers
    for shallower in (False, True) if layers > 1 else (False,):
        for tuned in (0, steps):
            name = "structured 1/2" + (f", {layers - 1} dec layers" if shallower else "")
            name += f" +{tuned} ft" if tuned else ""
            pruning = Pruning(
                "structured", finetune_steps=tuned, dec_layers=layers - 1 if shallower else None
            )
            slug = f"structured-d{layers - 1}-ft{tuned}" if shallower else f"structured-ft{tuned}"
            path = made(work, slug, lambda p, pr=pruning: prune_run(run, p, pr, overrides=own))
            out[name] = (path, {})
    student = cfg.replace(
        model={"hidden_dim": cfg.model.hidden_dim // 2, "ff_dim": cfg.model.ff_dim // 2},
        train={"max_time": student_time, "threads": threads},
    )
    out["distilled 1/2 width"] = (made(work, "student", lambda p: distill(run, student, p)), {})
    return out


def weight_bytes(translator: Translator, path: Path, resave: Path | None) -> int:
    """Bytes of the model's weights as a checkpoint file holds them (see the docstring):
    ``path``'s size, or that of the weights re-saved to ``resave``."""
    if translator.decode.quantize == "int8":
        total = 0
        for module in translator.model.modules():
            if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
                bias = module.bias()
                total += module.weight().numel() + (bias.numel() * 4 if bias is not None else 0)
            else:
                total += sum(p.numel() * 4 for p in module.parameters(recurse=False))
        return total
    if resave is not None:
        save_checkpoint(resave, translator.base_model, "")
        path = resave
    return path.stat().st_size


def timed(translator: Translator, texts: list[str]) -> tuple[list[str], float]:
    started = time.perf_counter()
    outputs = [r.text for r in translator.translate(texts)]
    return outputs, len(texts) / (time.perf_counter() - started)


def measure(
    run: Path, decode: dict, texts: list[str], refs: list[str], resave: Path | None
) -> dict:
    greedy = Translator.from_run(run, device="cpu", decode={**decode, "method": "greedy"})
    beam = greedy.configure(method="beam", beam_size=5)
    model = greedy.base_model
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    zeros = sum(int(p.eq(0).sum()) for p in prunable(model).values())
    greedy.translate(texts[:20])  # warm-up, untimed
    beam.translate(texts[:20])
    _, greedy_speed = timed(greedy, texts)
    outputs, beam_speed = timed(beam, texts)
    return {
        "size_mb": weight_bytes(greedy, RunDir(run).best, resave) / 1e6,
        "params": params,
        "nonzero_params": params - zeros,
        "greedy_sent_per_s": greedy_speed,
        "beam5_sent_per_s": beam_speed,
        "bleu": bleu(outputs, refs)[0],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a trained Transformer run directory (its best checkpoint)")
    parser.add_argument("--work", help="where the compressed runs go (default: RUN-compress)")
    parser.add_argument(
        "--finetune-steps", type=at_least(0), default=400, help="after pruning (400)"
    )
    parser.add_argument("--student-time", type=at_least(1.0), default=1200.0, help="seconds (1200)")
    parser.add_argument("--threads", type=at_least(1), default=2, help="torch threads (2)")
    parser.add_argument(
        "--n", type=at_least(1), help="only the first N test sentences (default: all)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = RunDir(run).config()
    if not cfg.data.test:
        sys.exit(f"{run}: no data.test in its config")
    work = Path(args.work or f"{run}-compress")
    work.mkdir(parents=True, exist_ok=True)
    texts = read_lines(f"{cfg.data.test}.{cfg.data.src_lang}")
    refs = read_lines(f"{cfg.data.test}.{cfg.data.tgt_lang}")
    texts, refs = texts[: args.n], refs[: args.n]
    forms = variants(run, work, args.finetune_steps, args.student_time, args.threads)
    torch.set_num_threads(args.threads)  # training may have set its own
    resave = work / "model-as-saved-now.safetensors"  # the trained run's own file is older
    rows = {
        name: measure(path, decode, texts, refs, resave if path == run else None)
        for name, (path, decode) in forms.items()
    }
    base = rows["model"]
    for row in rows.values():
        row["speedup_beam5"] = row["beam5_sent_per_s"] / base["beam5_sent_per_s"]
        row["speedup_greedy"] = row["greedy_sent_per_s"] / base["greedy_sent_per_s"]
        row["size_vs_model"] = row["size_mb"] / base["size_mb"]
        row["bleu_change"] = row["bleu"] - base["bleu"]
    result = {
        "run": str(run),
        "sentences": len(texts),
        "threads": args.threads,
        "cpu": cpu_bf16_summary(),
        "rows": rows,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(result["cpu"])
    print(f"{run}: {len(texts)} test sentences, {args.threads} threads, fp32 unless int8")
    head = f"{'form':<36}{'MB':>7}{'size':>7}{'params':>9}{'nonzero':>9}"
    print(head + f"{'greedy/s':>10}{'beam5/s':>9}{'x beam':>8}{'BLEU':>7}{'change':>8}")
    for name, r in rows.items():
        print(
            f"{name:<36}{r['size_mb']:>7.1f}{r['size_vs_model']:>7.0%}{r['params'] / 1e6:>8.2f}M"
            f"{r['nonzero_params'] / 1e6:>8.2f}M{r['greedy_sent_per_s']:>10.1f}"
            f"{r['beam5_sent_per_s']:>9.1f}{r['speedup_beam5']:>8.2f}{r['bleu']:>7.2f}"
            f"{r['bleu_change']:>+8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(guarded(Path(__file__).name, main))
