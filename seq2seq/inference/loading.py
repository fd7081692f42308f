"""Loading trained models from run directories: one checkpoint, or an ensemble's members."""

from __future__ import annotations

from pathlib import Path

from seq2seq.checkpoint import restore_model
from seq2seq.config import Config, parse_config
from seq2seq.data.prepare import load_codecs
from seq2seq.data.tokenizers import TextCodec
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.models.build import build_model
from seq2seq.models.contract import Seq2SeqModel
from seq2seq.rundir import CHECKPOINTS, RunDir

Codecs = tuple[TextCodec, TextCodec]


def load_run(run_dir: str | Path, checkpoint: str = "best") -> tuple[Config, Seq2SeqModel, Codecs]:
    """Config, model (with weights) and codecs of a run directory.

    ``checkpoint`` is ``best`` (``last`` while there is no best), ``last``,
    ``averaged``, or a path to a ``.safetensors`` file.

    Raises:
        CheckpointError: not a run directory, or an unusable checkpoint or tokenizer.
    """
    run = RunDir(run_dir)
    ckpt = run.load(checkpoint)
    cfg = parse_config(ckpt.config_text, str(ckpt.path))
    codecs = load_codecs(cfg.data, run)
    model = build_model(cfg.model, len(codecs[0].vocab), len(codecs[1].vocab))
    restore_model(model, ckpt)
    return cfg, model, codecs


def load_models(
    run_dir: str | Path, checkpoints: list[str]
) -> tuple[Config, list[Seq2SeqModel], Codecs]:
    """The run's config and codecs, and one model per checkpoint (an ensemble's members).

    The first checkpoint is a name of ``run_dir`` or a file (whose weights may come from
    elsewhere: the settings and tokenizers are ``run_dir``'s); each further one is a
    checkpoint of ``run_dir``, a file inside another run directory, or another run
    directory (its best checkpoint), sharing ``run_dir``'s vocabularies.

    Raises:
        ConfigError: no checkpoint given.
        CheckpointError: a checkpoint is unusable or its vocabularies differ.
    """
    if not checkpoints:
        raise ConfigError("no checkpoint given")
    first = checkpoints[0]
    if first in CHECKPOINTS:
        cfg, model, codecs = load_run(run_dir, first)
    else:
        run = RunDir(run_dir)
        cfg = run.config()
        codecs = load_codecs(cfg.data, run)
        model = _load_member(run_dir, first, codecs)
    models = [model] + [_load_member(run_dir, name, codecs) for name in checkpoints[1:]]
    return cfg, models, codecs


def _load_member(run_dir: str | Path, checkpoint: str, codecs: Codecs) -> Seq2SeqModel:
    """A checkpoint judged by the run directory it comes from; its vocabularies must be
    those of ``run_dir``."""
    path = Path(checkpoint)
    if checkpoint in CHECKPOINTS:
        source, name = Path(run_dir), checkpoint
    elif path.is_dir():
        source, name = path, "best"
    else:  # a file: judged by the run directory it lies in, if any
        in_run = RunDir(path.parent).is_run()
        source, name = (path.parent if in_run else Path(run_dir)), checkpoint
    _, model, (src_codec, tgt_codec) = load_run(source, name)
    if src_codec.vocab != codecs[0].vocab or tgt_codec.vocab != codecs[1].vocab:
        raise CheckpointError(
            f"{checkpoint}: its vocabularies (from {source}) differ from those of {run_dir}; "
            "ensemble members must share them"
        )
    return model
