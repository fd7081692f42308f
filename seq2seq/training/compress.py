"""Smaller models from a trained run: pruning (then fine-tuning) and distillation.

:func:`prune_run` writes a new run directory holding the pruned model; with
fine-tuning steps it continues the source run's training (its data position, schedule
and random state) from there, through the ordinary resume path, with the pruned
weights and a fresh optimizer. :func:`distill` translates the training sources with a
teacher run (beam search), keeps the translations in the student's run directory as
they are made, and trains the student config on them (Kim & Rush 2016).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from seq2seq.checkpoint import load_checkpoint, save_checkpoint
from seq2seq.config import Config, apply_overrides, dump_config, from_dict, to_dict
from seq2seq.data.corpus import ParallelText
from seq2seq.data.prepare import encode, load_split, load_training
from seq2seq.data.records import SourceCut
from seq2seq.errors import CheckpointError, ConfigError, DataError
from seq2seq.inference.engine import translate_texts
from seq2seq.inference.loading import load_run
from seq2seq.inference.translator import Translator
from seq2seq.models.prune import (
    drop_decoder_layers,
    magnitude_prune,
    shrink_rnn,
    shrink_transformer,
)
from seq2seq.rundir import RunDir
from seq2seq.training import distributed, driver
from seq2seq.training.loop import Progress
from seq2seq.training.loss import mean_loss
from seq2seq.training.optim import build_optimizer

log = logging.getLogger("seq2seq")
TEACHER_CHUNK = 1000  # sentences translated between two appends to the teacher's file
FINETUNE_KEYS = ("train.max_steps", "train.max_time", "train.max_epochs", "train.patience")


@dataclasses.dataclass(frozen=True)
class Pruning:
    """What :func:`prune_run` does.

    Attributes:
        method: ``magnitude`` (unstructured) or ``structured``.
        sparsity: magnitude: the share of prunable weights zeroed, in (0, 1) (None: 0.5).
        scope: magnitude: ``global`` (ranked together) or ``layer`` (each matrix alike;
            None: global).
        heads: structured Transformer: attention heads kept per layer (None: half).
        ff_dim: structured Transformer: feed-forward neurons kept per layer (None: half).
        dec_layers: structured Transformer: decoder layers kept (None: all), chosen one
            at a time by validation loss: the layer whose removal raises it least goes.
        output_dim: structured RNN: units of the attentional layer h~ kept (None: half).
        finetune_steps: updates of fine-tuning after pruning (0: none).
    """

    method: str = "magnitude"
    sparsity: float | None = None
    scope: str | None = None
    heads: int | None = None
    ff_dim: int | None = None
    finetune_steps: int = 0
    output_dim: int | None = None
    dec_layers: int | None = None


def prune_run(
    source: str | Path,
    out: str | Path,
    pruning: Pruning,
    checkpoint: str = "best",
    overrides: list[str] = (),  # type: ignore[assignment]
) -> Progress | None:
    """Prune the model of run ``source`` into the new run directory ``out``;
    ``overrides`` (``train.key=value`` or ``decode.key=value``) change the pruned run's
    config, e.g. the fine-tuning's ``train.lr`` or ``train.threads``.

    Returns:
        The fine-tuning's progress, or None without fine-tuning.

    Raises:
        ConfigError: a run pruned already, a sparsity outside (0, 1), a setting the
            method or the model does not use, an override outside ``train``/``decode``
            (or of the fine-tuning's length), an ``out`` that holds a run, or a call
            under torchrun.
        CheckpointError: ``source`` is not a run, or fine-tuning asked of a run without
            its ``last`` checkpoint.
    """
    src, dst = RunDir(source), RunDir(out)
    _check_request(src, dst, pruning, list(overrides))
    cfg, model, codecs = load_run(src.path, checkpoint)
    if cfg.prune.method != "none":
        origin = f" from {cfg.prune.source}" if cfg.prune.source else ""
        raise ConfigError(
            f"{src}: this run was pruned already ({_described(cfg)}{origin}); prune the "
            "original run instead, with the settings you want"
        )
    described = {"method": pruning.method, "source": str(src.path.resolve())}
    if pruning.method == "magnitude":
        sparsity, scope = pruning.sparsity or 0.5, pruning.scope or "global"
        share = magnitude_prune(model, sparsity, scope)  # type: ignore[arg-type]
        log.info("zeroed %.1f%% of the prunable weights (%s)", 100 * share, scope)
        described.update(sparsity=sparsity, scope=scope)
        new = cfg.replace(prune=described)
    else:
        model, model_cfg = _shrunk(src, cfg, model, codecs, pruning)
        new = cfg.replace(model=dataclasses.asdict(model_cfg), prune=described)
    new = from_dict(apply_overrides(to_dict(new), list(overrides)))
    dst.path.mkdir(parents=True, exist_ok=True)
    src.copy_codecs(cfg.data.joint_vocab, dst)
    dst.save_config(new)
    save_checkpoint(dst.best, model, dump_config(new))
    if not pruning.finetune_steps:
        return None
    new = _continued(src, dst, new, model, pruning.finetune_steps)
    return driver.train(new, dst, resume=True)


def _check_request(src: RunDir, dst: RunDir, pruning: Pruning, overrides: list[str]) -> None:
    """Refuse, before anything is written, what cannot be done as asked."""
    if distributed.launched():
        raise ConfigError("seq2seq prune runs in one process: start it without torchrun")
    if pruning.method not in ("magnitude", "structured"):
        raise ConfigError(f"unknown pruning method {pruning.method!r}: magnitude or structured")
    if pruning.finetune_steps < 0:
        raise ConfigError(f"--finetune-steps must be 0 or more, got {pruning.finetune_steps}")
    sparsity = pruning.sparsity
    if pruning.method == "magnitude" and sparsity is not None and not 0.0 < sparsity < 1.0:
        raise ConfigError(f"--sparsity must be between 0 and 1 (exclusive), got {sparsity}")
    unused = (
        {
            "--heads": pruning.heads,
            "--ff-dim": pruning.ff_dim,
            "--output-dim": pruning.output_dim,
            "--dec-layers": pruning.dec_layers,
        }
        if pruning.method == "magnitude"
        else {"--sparsity": pruning.sparsity, "--scope": pruning.scope}
    )
    for flag, value in unused.items():
        if value is not None:
            raise ConfigError(f"{flag} does not apply to --method {pruning.method}")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not key.startswith(("train.", "decode.")):
            raise ConfigError(
                f"override '{item}': a pruned run takes train.* and decode.* changes only "
                "(its model and data are the source run's)"
            )
        if pruning.finetune_steps and key in FINETUNE_KEYS:
            raise ConfigError(f"override '{item}': --finetune-steps sets how long fine-tuning runs")
    if dst.path.resolve() == src.path.resolve():
        raise ConfigError(f"--out {dst} is the run being pruned: choose a new directory")
    if dst.is_run() or dst.last.exists():
        raise ConfigError(f"{dst} already holds a run: choose a new directory for the pruned one")
    src.require()
    if pruning.finetune_steps and not src.last.is_file():
        raise CheckpointError(
            f"{src}: fine-tuning continues the run's training from its {src.last.name}, "
            "which it does not hold; prune without --finetune-steps"
        )


def _shrunk(src: RunDir, cfg: Config, model, codecs, pruning: Pruning):
    """The structurally pruned model and its model config (see ``models.prune``)."""
    mc = cfg.model
    if mc.arch == "transformer":
        wrong = [("--output-dim", pruning.output_dim)]
    else:
        wrong = [
            ("--heads", pruning.heads),
            ("--ff-dim", pruning.ff_dim),
            ("--dec-layers", pruning.dec_layers),
        ]
    for flag, value in wrong:
        if value is not None:
            raise ConfigError(f"{flag} does not apply to {src}'s model ({mc.arch})")
    try:
        if mc.arch == "transformer":
            if pruning.dec_layers is not None and pruning.dec_layers > mc.dec_layers:
                raise ValueError(
                    f"cannot keep {pruning.dec_layers} decoder layers: the model has "
                    f"{mc.dec_layers}"
                )
            if pruning.dec_layers is not None and pruning.dec_layers < mc.dec_layers:
                keep = _kept_decoder_layers(src, cfg, model, codecs, pruning.dec_layers)
                model, mc = drop_decoder_layers(model, mc, keep)
            heads = pruning.heads or max(1, mc.heads // 2)
            ff_dim = pruning.ff_dim or max(1, mc.ff_dim // 2)
            return shrink_transformer(model, mc, heads, ff_dim)
        output_dim = pruning.output_dim or max(1, (mc.output_dim or mc.hidden_dim) // 2)
        return shrink_rnn(model, mc, output_dim)
    except ValueError as err:
        raise ConfigError(f"{src}: structured pruning: {err}") from None


def _kept_decoder_layers(src: RunDir, cfg: Config, model, codecs, n: int) -> list[int]:
    """The ``n`` decoder layers to keep: one at a time, the layer without which the
    validation loss is lowest is dropped (Michel et al. 2019 rank heads alike)."""
    valid = load_split(cfg.data, "valid")
    if valid is None:
        raise ConfigError(
            f"--dec-layers ranks decoder layers by validation loss, but {src} has no data.valid"
        )
    examples = encode(valid, *codecs, None, cut=SourceCut.of(cfg.data, codecs[0]))
    batch_tokens, cpu = cfg.decode.batch_tokens, torch.device("cpu")
    log.info(
        "decoder layers: validation loss %.4f with all %d",
        mean_loss(model, examples, batch_tokens, cpu),
        cfg.model.dec_layers,
    )
    keep = list(range(cfg.model.dec_layers))
    while len(keep) > n:
        without = {}
        for layer in keep:
            rest = [i for i in keep if i != layer]
            smaller = drop_decoder_layers(model, cfg.model, rest)[0]
            without[layer] = mean_loss(smaller, examples, batch_tokens, cpu)
            log.info("decoder layers: validation loss %.4f without layer %d", without[layer], layer)
        keep.remove(min(without, key=without.__getitem__))
    log.info("decoder layers kept: %s", ", ".join(map(str, keep)))
    return keep


def _described(cfg: Config) -> str:
    if cfg.prune.method == "magnitude":
        return f"magnitude, sparsity {cfg.prune.sparsity:g}, {cfg.prune.scope}"
    if cfg.model.arch == "rnn":
        return f"structured: attentional layer of {cfg.model.output_dim}"
    return (
        f"structured: {cfg.model.heads} heads, feed-forward {cfg.model.ff_dim}, "
        f"{cfg.model.dec_layers} decoder layers"
    )


def _continued(src: RunDir, dst: RunDir, cfg: Config, model, steps: int) -> Config:
    """Write ``dst``'s ``last``: the pruned weights, a fresh optimizer, and the source
    run's place in its data and schedule, to be trained ``steps`` more updates."""
    state = copy.deepcopy(load_checkpoint(src.last).trainer or {})
    progress = Progress(**state["progress"])
    progress = dataclasses.replace(
        progress, elapsed=0.0, tgt_tokens=0, best=None, bad_validations=0, stopped="", history=[]
    )
    state["progress"] = dataclasses.asdict(progress)
    for key in ("job", "world", "rank_rng"):  # one process, not the torchrun job it was
        state.pop(key, None)
    cfg = cfg.replace(
        train={
            "max_steps": progress.step + steps,
            "max_time": None,
            "max_epochs": max(cfg.train.max_epochs, progress.epoch + steps + 1),
            "patience": 0,
        }
    )
    dst.save_config(cfg)
    optimizer = build_optimizer(cfg.train, model.parameters())
    save_checkpoint(dst.last, model, dump_config(cfg), optimizer=optimizer, trainer=state)
    log.info("fine-tuning %d steps from step %d of %s", steps, progress.step, src)
    return cfg


# ---------------------------------------------------------------------------- distillation


def distill(
    teacher: str | Path, cfg: Config, out: str | Path, *, beam: int = 5, resume: bool = False
) -> Progress:
    """Sequence-level knowledge distillation: the student ``cfg`` trained in ``out`` on
    its training sources paired with ``teacher``'s beam-search translations.

    The translations go to ``out/teacher/`` as they are made; an interrupted run picks
    up where they stopped, and once they are complete only the training resumes.
    Validation keeps the real references.

    Raises:
        ConfigError: a streamed corpus (the teacher's translations need it in memory),
            or teacher translations in ``out`` made by another teacher or from other data.
        CheckpointError: ``teacher`` is not a run.
    """
    src, dst = RunDir(teacher), RunDir(out)
    if distributed.launched():
        raise ConfigError("seq2seq distill runs in one process: start it without torchrun")
    src.require()
    driver.check_run_dir(dst, resume)  # before hours of translating, not after
    train_text = load_training(cfg.data)
    if not isinstance(train_text, ParallelText):
        raise ConfigError(
            "distillation translates every training source with the teacher and keeps "
            "the corpus in memory: set data.stream: false"
        )
    valid_text = load_split(cfg.data, "valid")
    dst.path.mkdir(parents=True, exist_ok=True)
    targets = teacher_translations(src, train_text.src, dst, beam)
    empty = [i for i, line in enumerate(targets) if not line]
    if empty:  # an empty output is no target: such a pair keeps its reference
        log.warning("teacher gave %d empty outputs: those pairs keep their references", len(empty))
        targets = [line or ref for line, ref in zip(targets, train_text.tgt, strict=True)]
    student_text = dataclasses.replace(
        train_text, tgt=targets, name=f"{train_text.name}, targets by teacher {src}"
    )
    return driver.train(cfg, dst, student_text, valid_text, resume=resume)


def teacher_translations(teacher: RunDir, sources: list[str], out: RunDir, beam: int) -> list[str]:
    """The teacher's beam-``beam`` translation of every source, cached in ``out``.

    Raises:
        ConfigError: the cache in ``out`` was made by another teacher checkpoint, beam,
            or list of sources.
    """
    ident = {
        "teacher": str(teacher.path.resolve()),
        "checkpoint": _digest_file(teacher.checkpoint("best")),
        "beam": beam,
        "sources": hashlib.sha256("\n".join(sources).encode()).hexdigest(),
        "count": len(sources),
    }
    done = _cached(out, ident)
    if len(done) < len(sources):
        model = Translator.from_run(teacher.path, decode={"method": "beam", "beam_size": beam})
        log.info(
            "teacher %s translates %d sources (beam %d; %d done before)",
            teacher,
            len(sources) - len(done),
            beam,
            len(done),
        )
        out.teacher_dir.mkdir(parents=True, exist_ok=True)
        out.teacher_key.write_text(json.dumps(ident), encoding="utf-8")
        with out.teacher_outputs.open("a", encoding="utf-8") as handle:
            for start in range(len(done), len(sources), TEACHER_CHUNK):
                chunk = sources[start : start + TEACHER_CHUNK]
                lines = [" ".join(t.text.split()) for t in translate_texts(model, chunk)]
                handle.write("".join(line + "\n" for line in lines))
                handle.flush()
                os.fsync(handle.fileno())
                done += lines
                log.info("teacher: %d of %d sources translated", len(done), len(sources))
    return done


def _cached(out: RunDir, ident: dict) -> list[str]:
    """The translations already in ``out`` for exactly ``ident`` (none when absent)."""
    if not out.teacher_outputs.is_file():
        return []
    try:
        saved = json.loads(out.teacher_key.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        saved = None
    if saved != ident:
        raise ConfigError(
            f"{out.teacher_outputs} holds translations by another teacher, checkpoint, beam "
            f"or corpus ({out.teacher_key.name} differs): remove {out.teacher_dir} to "
            "translate again, or distill into another directory"
        )
    try:
        text = out.teacher_outputs.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{out.teacher_outputs}: unreadable ({err})") from None
    complete = text[: text.rfind("\n") + 1]
    if complete != text:  # a line cut short by a crash: dropped, translated again
        out.teacher_outputs.write_text(complete, encoding="utf-8")
    return complete.split("\n")[:-1]


def _digest_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
