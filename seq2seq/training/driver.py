"""The one training entry point: a config and its data in, a run directory out.

``seq2seq train``, :meth:`seq2seq.Seq2Seq.fit` and ``bench/train_speed.py`` all come
through here. :func:`prepare` does everything before the first step (seeds, the run's
config, tokenizers, encoded data, the model, the validation decoder, resuming);
:func:`train` checks the run directory, prepares, runs the loop and draws the curves,
logging to the run's ``train.log``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
from collections.abc import Callable, Iterator

import torch

from seq2seq import metrics as metrics_lib
from seq2seq.checkpoint import load_checkpoint
from seq2seq.config import Config
from seq2seq.data.batching import Examples
from seq2seq.data.cache import encode_stream
from seq2seq.data.corpus import ParallelText
from seq2seq.data.prepare import (
    encode,
    fit_codecs,
    fitting_text,
    load_codecs,
    load_split,
    load_training,
)
from seq2seq.data.records import SourceCut
from seq2seq.data.stream import CorpusStream
from seq2seq.data.tokenizers import TextCodec
from seq2seq.devices import keep_freed_cpu_memory, pick_device
from seq2seq.errors import CheckpointError, ConfigError, DataError
from seq2seq.inference.translator import Translator
from seq2seq.models.build import build_model
from seq2seq.rundir import RunDir
from seq2seq.training import distributed
from seq2seq.training.distributed import SINGLE, Ranks, process_group
from seq2seq.training.loop import Progress, Trainer, step_log
from seq2seq.viz import plot_curves

log = logging.getLogger("seq2seq")


def train(
    cfg: Config,
    run: RunDir,
    train_text: ParallelText | CorpusStream | None = None,
    valid_text: ParallelText | None = None,
    *,
    resume: bool = False,
) -> Progress:
    """Train ``cfg`` into ``run``; the config's own splits when no text is given.

    Under torchrun (``RANK``/``WORLD_SIZE`` in the environment) every process calls
    this: they join one process group, rank 0 builds the tokenizers and writes the run,
    and a job that torchrun restarted (``--max-restarts``) resumes from ``last``.

    Returns:
        The progress: the validation history and why training stopped (``interrupted``
        after Ctrl-C, with the last checkpoint saved).

    Raises:
        ConfigError: a run directory that would lose or mix up work, or settings that
            cannot run on this machine, before any expensive work.
        CheckpointError: nothing to resume.
        DataError: unusable data, or a run directory that cannot be created.
    """
    if cfg.decode.quantize == "int8" and pick_device(cfg.train.device).type != "cpu":
        raise ConfigError(
            "decode.quantize: int8 decodes on the CPU only, but train.device is "
            f"{cfg.train.device!r} on a machine with a GPU: set train.device: cpu or "
            "quantize at inference time (seq2seq translate --device cpu --quantize int8)"
        )
    with process_group(cfg.train.device, cfg.train.dist_timeout) as ranks:
        # rank 0 decides for all: a restart may reach the nodes with different counts
        restarted = ranks.broadcast(not resume and ranks.main and _restarted(run))
        check_run_dir(run, resume or restarted)
        train_text = train_text if train_text is not None else load_training(cfg.data)
        valid_text = valid_text if valid_text is not None else load_split(cfg.data, "valid")
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create run directory {run}: {err.strerror}") from None
        with log_to(run, ranks):
            if restarted:
                log.info("torchrun restarted the job: resuming from %s", run.last)
            trainer = prepare(
                cfg, run, train_text, valid_text, resume=resume or restarted, ranks=ranks
            )
            progress = trainer.train()
            drawn = any("valid_loss" in r or "train_loss" in r for r in progress.history)
            if drawn and ranks.main:
                plot_curves(progress.history, run.curves)
    return progress


def _restarted(run: RunDir) -> bool:
    """Whether torchrun restarted this job (``--max-restarts``) after it saved ``last``:
    the checkpoint names the same torchrun job, so another run is never taken over."""
    if distributed.restarts() == 0 or not run.last.is_file():
        return False
    try:
        saved_by = (load_checkpoint(run.last).trainer or {}).get("job")
    except CheckpointError:
        return False
    return saved_by is not None and saved_by == distributed.job_id()


def prepare(
    cfg: Config,
    run: RunDir,
    train_text: ParallelText | CorpusStream,
    valid_text: ParallelText | None = None,
    *,
    resume: bool = False,
    ranks: Ranks = SINGLE,
) -> Trainer:
    """Everything before the first step: the Trainer of ``cfg`` in ``run``, ready to go.

    Seeds Python's and PyTorch's generators, writes the run's config, fits (or, on
    resume, loads) the tokenizers, encodes the data through the run's cache, builds the
    model on its device, and restores the last checkpoint when resuming. A streamed
    ``train_text`` is surveyed (and sampled for the tokenizers) first, then encoded into
    a memory-mapped cache.

    With several ``ranks``, rank 0 writes the config, fits the tokenizers and fills the
    cache while the others wait, then they load what it wrote; only rank 0 encodes the
    validation set and gets a validation decoder. Every rank starts from the same
    weights and then draws dropout from a stream of its own.
    """
    if ranks.grouped:
        log.info("distributed training: %d processes, backend %s", ranks.world, ranks.backend)
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    valid_text = valid_text if ranks.main else None
    if ranks.main:
        seed = cfg.train.seed
        fit_text = fitting_text(cfg.data, train_text, run.cache, fitted=resume, seed=seed)
        cfg = with_rendered_symbols(cfg, fit_text, valid_text)
        run.save_config(cfg)
        codecs = load_codecs(cfg.data, run) if resume else fit_codecs(cfg.data, fit_text, run)
        train_ex, valid_ex = _encoded(cfg, run, codecs, train_text, valid_text)
    # rank 0 has written the tokenizers and the cache: the others take its symbols
    symbols = ranks.broadcast(cfg.data.symbols)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, symbols=symbols))
    data = cfg.data
    if not ranks.main:
        codecs = load_codecs(data, run)
        train_ex, valid_ex = _encoded(cfg, run, codecs, train_text, None)
    src_codec, tgt_codec = codecs
    cut = SourceCut.of(data, src_codec)
    device = ranks.device if ranks.grouped else pick_device(cfg.train.device)
    if device.type == "cpu" and keep_freed_cpu_memory():
        log.info("CPU memory: freed blocks kept for the next steps (glibc mallopt)")
    model = build_model(cfg.model, len(src_codec.vocab), len(tgt_codec.vocab)).to(device)
    if ranks.rank:
        torch.manual_seed(cfg.train.seed + 1000003 * ranks.rank)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    log.info("model: %.2fM parameters; %d training pairs", millions, len(train_ex))
    score_fn = None
    if valid_text is not None:
        # Validation decodes the live weights: never an int8 or bf16 copy of them.
        live = dataclasses.replace(cfg.decode, quantize="none", precision="fp32")
        translator = Translator(model, *codecs, live, cut=cut)  # valid_text is rendered
        metrics = {t.name: t.metric for t in data.tasks if t.metric}
        score_fn = _scores_of(translator, valid_text, cfg.train.early_stop_metric, metrics)
    trainer = Trainer(cfg, model, train_ex, valid_ex, run, device, score_fn, ranks)
    if resume:
        trainer.resume()
    return trainer


def _encoded(
    cfg: Config,
    run: RunDir,
    codecs: tuple[TextCodec, TextCodec],
    train_text: ParallelText | CorpusStream,
    valid_text: ParallelText | None,
) -> tuple[Examples, Examples | None]:
    """The training (and validation) examples, through the run's cache (memory-mapped
    from it for a stream)."""
    data = cfg.data
    cut = SourceCut.of(data, codecs[0])
    limits = {"cut": cut, "max_tgt_len": data.max_tgt_len}
    if isinstance(train_text, CorpusStream):
        train_ex = encode_stream(train_text, *codecs, run.cache, max_len=data.max_len, **limits)
    else:
        train_ex = encode(train_text, *codecs, data.max_len, run.cache, **limits)
    valid_ex = encode(valid_text, *codecs, None, run.cache, cut=cut) if valid_text else None
    return train_ex, valid_ex


def with_rendered_symbols(cfg: Config, *texts: ParallelText | None) -> Config:
    """``cfg`` with the tags and separators its records were rendered with added to
    ``data.symbols``, so that they are single tokens and the run remembers them."""
    rendered = [s for text in texts if text is not None for s in text.symbols]
    symbols = tuple(dict.fromkeys((*cfg.data.symbols, *rendered)))
    if symbols == cfg.data.symbols:
        return cfg
    log.info("symbols (one token each): %s", " ".join(symbols))
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, symbols=symbols))


def _scores_of(
    translator: Translator,
    text: ParallelText,
    early_stop_metric: str,
    task_metrics: dict[str, str] | None = None,
) -> Callable[[], dict[str, float]]:
    """Decode the valid set and score it: BLEU always, plus the early-stopping metric.

    ``rouge`` records ROUGE-1/2/L F1 (stemmed) and their mean as ``valid_rouge``. With
    several tasks (``text.parts``) each is scored on its own as ``valid_<task>_<metric>``
    (by its ``metric`` in ``task_metrics``, else the early-stopping one), and
    ``valid_<early_stop_metric>`` is the mean of the tasks' scores (no corpus score
    across tasks is made: it would mix them).
    """
    task_metrics = task_metrics or {}

    def scored(hyps: list[str], refs: list[str], metric: str, prefix: str) -> dict[str, float]:
        scores = {f"{prefix}bleu": metrics_lib.bleu(hyps, refs)[0]}
        if metric == "chrf":
            scores[f"{prefix}chrf"] = metrics_lib.chrf(hyps, refs)[0]
        elif metric == "exact":
            scores[f"{prefix}exact"] = 100 * metrics_lib.exact_match(hyps, refs)
        elif metric == "rouge":
            rouge = metrics_lib.rouge(hyps, refs)
            parts = {f"{prefix}{name}": rouge[name] for name in ("rouge1", "rouge2", "rougeL")}
            scores.update(parts, **{f"{prefix}rouge": sum(parts.values()) / len(parts)})
        return scores

    def score() -> dict[str, float]:
        hyps = translator(text.src)
        if not text.parts:
            return scored(hyps, text.tgt, early_stop_metric, "valid_")
        scores, means = {}, []
        for part in text.parts:
            metric = task_metrics.get(part.name, early_stop_metric)
            span = slice(part.start, part.stop)
            prefix = f"valid_{part.name}_"
            scores.update(scored(hyps[span], text.tgt[span], metric, prefix))
            means.append(scores.get(f"{prefix}{metric}", scores[f"{prefix}bleu"]))
        if early_stop_metric != "loss":
            scores[f"valid_{early_stop_metric}"] = sum(means) / len(means)
        return scores

    return score


def check_run_dir(run: RunDir, resume: bool) -> None:
    """Refuse what would lose or mix up work: a file, an existing run, nothing to resume."""
    if run.path.exists() and not run.path.is_dir():
        raise ConfigError(f"run directory {run} is an existing file, not a directory")
    if resume and not run.last.is_file():
        raise CheckpointError(f"nothing to resume in {run}: it holds no {run.last.name}")
    if not resume and run.last.exists():
        raise ConfigError(
            f"{run} already holds a training run: resume it (--resume, "
            "fit(resume=True)) or choose another run directory"
        )


@contextlib.contextmanager
def log_to(run: RunDir, ranks: Ranks = SINGLE) -> Iterator[None]:
    """Log to the run's ``train.log`` (validation lines and every step's line) meanwhile.

    Ranks other than 0 write no file and show warnings and errors only.
    """
    if not ranks.main:
        old_level = log.level
        log.setLevel(logging.WARNING)
        try:
            yield
        finally:
            log.setLevel(old_level)
        return
    handler = logging.FileHandler(run.log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    old_level = log.level
    log.setLevel(logging.INFO)
    step_log.setLevel(logging.INFO)
    for logger in (log, step_log):
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in (log, step_log):
            logger.removeHandler(handler)
        log.setLevel(old_level)
        handler.close()
