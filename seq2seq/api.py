"""The Python API, in the spirit of the seed's Keras flow.

model = Seq2Seq(data={"task": "dates", "tokenizer": "char"}, model={"attention": "bahdanau"})
model.fit(out="runs/dates")               # train (a run directory holds everything)
model.evaluate()                          # {"bleu": ..., "exact_match": ...} on the test split
model.predict(["March 3, 2021"])          # ["2021-03-03"]
model.save("my_model"); Seq2Seq.load("my_model")
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from seq2seq import metrics as metrics_lib
from seq2seq.checkpoint import save_checkpoint
from seq2seq.config import Config, dump_config, from_dict, save_config
from seq2seq.data.corpus import ParallelText, read_parallel
from seq2seq.data.prepare import copy_codecs, encode, fit_codecs, load_codecs, load_split
from seq2seq.errors import CheckpointError, ConfigError, DataError
from seq2seq.inference import Translation, Translator, load_run, pick_device
from seq2seq.models.build import build_model
from seq2seq.training.loop import BEST, LAST, Progress, Trainer, step_log
from seq2seq.viz import plot_curves

log = logging.getLogger("seq2seq")

Data = str | Path | ParallelText | Sequence[tuple[str, str]] | None


def _as_text(data: Data, cfg: Config, split: str) -> ParallelText | None:
    """Accept a corpus spec, sentence pairs, ParallelText, or None (the config's split)."""
    if data is None:
        return load_split(cfg.data, split)
    if isinstance(data, ParallelText):
        return data
    if isinstance(data, (str, Path)):
        return read_parallel(data, cfg.data.src_lang, cfg.data.tgt_lang, name=split)
    pairs = [(s, t) for s, t in data if s.strip() and t.strip()]
    if not pairs:
        raise DataError(f"{split}: no usable sentence pairs given")
    return ParallelText([s for s, _ in pairs], [t for _, t in pairs], split, len(data) - len(pairs))


@contextlib.contextmanager
def _log_to(run_dir: Path):
    """Log to ``run_dir/train.log`` (validation lines and every step's line) while training."""
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
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


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse what would lose or mix up work: a file, an existing run, nothing to resume."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {run_dir} is an existing file, not a directory")
    if resume and not (run_dir / LAST).is_file():
        raise CheckpointError(f"nothing to resume in {run_dir}: it holds no {LAST}")
    if not resume and (run_dir / LAST).exists():
        raise ConfigError(
            f"{run_dir} already holds a training run: resume it (--resume, "
            "fit(resume=True)) or choose another run directory"
        )


class Seq2Seq:
    """A sequence-to-sequence model with its tokenizers: build, fit, evaluate, predict.

    Args:
        config: a full :class:`Config`; or leave it out and give sections as keywords,
            e.g. ``Seq2Seq(model={"attention": "luong"}, train={"lr": 3e-4})``.
    """

    def __init__(self, config: Config | None = None, **sections: dict):
        self.config = config.replace(**sections) if config else from_dict(sections)
        self.translator: Translator | None = None
        self.run_dir: Path | None = None
        self.progress: Progress | None = None

    # ------------------------------------------------------------------ training

    def fit(
        self,
        train: Data = None,
        valid: Data = None,
        *,
        out: str | Path | None = None,
        resume: bool = False,
    ) -> list[dict]:
        """Train; returns the validation history. Weights end at the best checkpoint.

        Args:
            train: training pairs (a corpus spec, ``[(src, tgt), ...]``) or None for the config's.
            valid: validation pairs, likewise.
            out: run directory (a temporary one when None).
            resume: continue from ``out``'s last checkpoint.
        """
        cfg = self.config
        if cfg.decode.quantize == "int8" and pick_device(cfg.train.device).type != "cpu":
            raise ConfigError(
                "decode.quantize: int8 decodes on the CPU only, but train.device is "
                f"{cfg.train.device!r} on a machine with a GPU: set train.device: cpu or "
                "quantize at inference time (seq2seq translate --device cpu --quantize int8)"
            )
        run_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="seq2seq-"))
        _check_run_dir(run_dir, resume)
        train_text, valid_text = _as_text(train, cfg, "train"), _as_text(valid, cfg, "valid")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"cannot create run directory {run_dir}: {err.strerror}") from None
        with _log_to(run_dir):
            self._fit(cfg, run_dir, train_text, valid_text, resume)
        return self.progress.history

    def _fit(self, cfg: Config, run_dir: Path, train_text, valid_text, resume: bool) -> None:
        random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        save_config(cfg, run_dir / "config.yaml")
        if resume:
            src_codec, tgt_codec = load_codecs(cfg.data, run_dir)
        else:
            src_codec, tgt_codec = fit_codecs(cfg.data, train_text, run_dir)
        cache = run_dir / "cache"
        train_ex = encode(train_text, src_codec, tgt_codec, cfg.data.max_len, cache)
        valid_ex = encode(valid_text, src_codec, tgt_codec, None, cache) if valid_text else None
        device = pick_device(cfg.train.device)
        model = build_model(cfg.model, len(src_codec.vocab), len(tgt_codec.vocab)).to(device)
        log.info("model: %.2fM parameters; %d training pairs", _millions(model), len(train_ex))
        # Validation decodes the live weights: never an int8 or bf16 copy of them.
        live = dataclasses.replace(cfg.decode, quantize="none", precision="fp32")
        self.translator = Translator(model, src_codec, tgt_codec, live)
        score_fn = None
        if valid_text is not None:

            def score_fn() -> float:
                return metrics_lib.bleu(self.translator(valid_text.src), valid_text.tgt)[0]

        trainer = Trainer(cfg, model, train_ex, valid_ex, run_dir, device, score_fn)
        if resume:
            trainer.resume()
        self.progress = trainer.train()
        if any("valid_loss" in r or "train_loss" in r for r in self.progress.history):
            plot_curves(self.progress.history, run_dir / "curves.png")
        self._use_checkpoint(run_dir)

    def _use_checkpoint(self, run_dir: Path) -> None:
        checkpoint = "best" if (run_dir / BEST).is_file() else "last"
        self.translator = Translator.from_run(run_dir, checkpoint, self.config.train.device)
        self.run_dir = run_dir

    # ------------------------------------------------------------------ inference

    def _require(self) -> Translator:
        if self.translator is None:
            raise RuntimeError("this model has no weights yet: call fit() or Seq2Seq.load()")
        return self.translator

    def predict(self, texts: Iterable[str], **decode) -> list[str]:
        """Translate raw sentences to detokenized text.

        Keyword arguments override the config's ``decode`` settings for this call,
        e.g. ``predict(texts, method="beam", beam_size=5)``.
        """
        return self._require().configure(**decode)(list(texts))

    def translate(
        self, texts: Iterable[str], attention: bool = False, **decode
    ) -> list[Translation]:
        """Like :meth:`predict`, with scores, n-best lists, tokens and (on request) the
        attention weights ``[output tokens, source tokens]`` of each sentence."""
        return self._require().configure(**decode).translate(list(texts), attention=attention)

    def score(self, sources: Iterable[str], targets: Iterable[str]) -> list[float]:
        """Each pair's log-likelihood ``log p(target | source)`` under the model (EOS
        included): for reranking or filtering parallel data."""
        return [value for value, _ in self._require().score(list(sources), list(targets))]

    def evaluate(
        self, data: Data = None, metrics: Iterable[str] = ("bleu", "chrf", "exact")
    ) -> dict:
        """Scores of the model's outputs against references (the config's test split by default)."""
        text = _as_text(data, self.config, "test")
        if text is None:
            raise DataError("no evaluation data: pass pairs or set data.test / data.task")
        return metrics_lib.compute(self.predict(text.src), text.tgt, metrics)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write config, tokenizers, vocabularies and weights; :meth:`load` reads them."""
        translator = self._require()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_config(self.config, directory / "config.yaml")
        copy_codecs(self.config.data, self.run_dir, directory)
        # the trained weights, never an int8 or bf16 inference copy of them
        save_checkpoint(directory / BEST, translator.base_model, dump_config(self.config))
        return directory

    @classmethod
    def load(cls, directory: str | Path, checkpoint: str = "best", device: str = "auto") -> Seq2Seq:
        """Load a directory written by :meth:`save` or ``seq2seq train``."""
        cfg, model, codecs = load_run(directory, checkpoint)
        self = cls(cfg)
        model.to(pick_device(device)).eval()
        self.translator = Translator(model, *codecs, cfg.decode)
        self.run_dir = Path(directory)
        return self


def _millions(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6
