"""The Python API, in the spirit of the seed's Keras flow.

model = Seq2Seq(data={"task": "dates", "tokenizer": "char"}, model={"attention": "bahdanau"})
model.fit(out="runs/dates")               # train (a run directory holds everything)
model.evaluate()                          # {"bleu": ..., "exact_match": ...} on the test split
model.predict(["March 3, 2021"])          # ["2021-03-03"]
model.save("my_model"); Seq2Seq.load("my_model")
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from seq2seq.checkpoint import save_checkpoint
from seq2seq.config import Config, dump_config, from_dict
from seq2seq.data.corpus import ParallelText, read_parallel
from seq2seq.data.prepare import load_split, load_training
from seq2seq.data.records import Record, Rendering
from seq2seq.data.stream import CorpusStream
from seq2seq.errors import ConfigError, DataError
from seq2seq.inference import Translation, Translator, evaluate
from seq2seq.inference.engine import check_symbols
from seq2seq.inference.evaluate import check_metrics
from seq2seq.metrics import compute
from seq2seq.rundir import RunDir
from seq2seq.training import driver
from seq2seq.training.loop import Progress

Data = str | Path | ParallelText | Sequence[tuple[str, str]] | None


def _training_data(data: Data, cfg: Config) -> ParallelText | CorpusStream | None:
    """Training data for ``fit``: a corpus spec is read as the config says (streamed
    with ``data.stream``), anything else as :func:`_as_text` reads it."""
    if isinstance(data, (str, Path)) and not (cfg.data.tasks or cfg.data.task):
        return load_training(dataclasses.replace(cfg.data, train=str(data)))
    return None if data is None else _as_text(data, cfg, "train")


def _as_text(
    data: Data, cfg: Config, split: str, tgt_lang: str | None = None, task: str | None = None
) -> ParallelText | None:
    """Accept a corpus spec, sentence pairs, ParallelText (rendered already), or None (the
    config's split); records are rendered as the config says, those without a
    ``tgt_lang`` asking for ``tgt_lang`` (else ``data.tgt_lang``), those without a task
    for ``task``."""
    if data is None:
        return load_split(cfg.data, split)
    if isinstance(data, ParallelText):
        return data
    rendering, lang = Rendering.of(cfg.data), tgt_lang or cfg.data.tgt_lang
    if isinstance(data, (str, Path)):
        return read_parallel(
            data,
            cfg.data.src_lang,
            lang,
            name=split,
            rendering=rendering,
            task=task,
            dialogue_eou=cfg.data.dialogue_eou,
        )
    records = [Record(s, t, tgt_lang=lang, task=task) for s, t in data if s.strip() and t.strip()]
    if not records:
        raise DataError(f"{split}: no usable sentence pairs given")
    return ParallelText(
        [rendering.source(r) for r in records],
        [r.tgt for r in records],
        split,
        len(data) - len(records),
        tuple(rendering.symbols(records)),
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
        run = RunDir(out if out is not None else tempfile.mkdtemp(prefix="seq2seq-"))
        driver.check_run_dir(run, resume)  # before reading any data
        self.progress = driver.train(
            cfg,
            run,
            _training_data(train, cfg),
            None if valid is None else _as_text(valid, cfg, "valid"),
            resume=resume,
        )
        self.translator = Translator.from_run(run.path, "best", cfg.train.device)
        self.config = run.config()  # with the symbols its records were rendered with
        self.run_dir = run.path
        return self.progress.history

    # ------------------------------------------------------------------ inference

    def _require(self) -> Translator:
        if self.translator is None:
            raise RuntimeError("this model has no weights yet: call fit() or Seq2Seq.load()")
        return self.translator

    def predict(
        self,
        texts: Iterable[str],
        *,
        tgt_lang: str | None = None,
        task: str | None = None,
        constraints: Sequence[Sequence[str]] | None = None,
        **decode,
    ) -> list[str]:
        """Translate raw sentences to detokenized text.

        ``tgt_lang`` (``"de"``) and ``task`` choose the output language and the task of
        a model trained with language or task tags (``data.lang_tags``/``task_tags``).
        ``constraints`` gives each text the phrases its output must contain (with beam
        search: ``predict(texts, constraints=[["Hund"]], method="beam")``). Other keyword
        arguments override the config's ``decode`` settings for this call, e.g.
        ``predict(texts, method="beam", beam_size=5)``.
        """
        results = self.translate(
            texts, tgt_lang=tgt_lang, task=task, constraints=constraints, **decode
        )
        return [r.text for r in results]

    def translate(
        self,
        texts: Iterable[str],
        attention: bool = False,
        *,
        tgt_lang: str | None = None,
        task: str | None = None,
        constraints: Sequence[Sequence[str]] | None = None,
        **decode,
    ) -> list[Translation]:
        """Like :meth:`predict`, with scores, n-best lists, tokens and (on request) the
        attention weights ``[output tokens, source tokens]`` of each sentence."""
        if constraints is not None and any(isinstance(c, str) for c in constraints):
            raise ConfigError(
                "constraints: one list of phrases per text, e.g. [['Hund'], []] for two texts"
            )
        phrases = None if constraints is None else [list(c) for c in constraints]
        return (
            self._require()
            .configure(**decode)
            .translate(
                list(texts),
                attention=attention,
                tgt_lang=tgt_lang,
                task=task,
                constraints=phrases,
            )
        )

    def score(
        self,
        sources: Iterable[str],
        targets: Iterable[str],
        *,
        tgt_lang: str | None = None,
        task: str | None = None,
    ) -> list[float]:
        """Each pair's log-likelihood ``log p(target | source)`` under the model (EOS
        included): for reranking or filtering parallel data. ``tgt_lang``/``task`` tag
        the sources as in :meth:`predict`."""
        translator = self._require()
        rendered = translator.render(list(sources), tgt_lang=tgt_lang, task=task)
        return [value for value, _ in translator.score(rendered, list(targets))]

    def evaluate(
        self,
        data: Data = None,
        metrics: Iterable[str] = ("bleu", "chrf", "exact"),
        *,
        tgt_lang: str | None = None,
        task: str | None = None,
    ) -> dict:
        """Scores of the model's outputs against references (the config's test split by
        default); ``tgt_lang`` is the language of the references (its tag on the sources),
        ``task`` the task of pairs that name none.

        With ``data.tasks`` the config's test split also gives each task's scores, under
        ``"tasks"``: ``{"tasks": {"en-de": {"bleu": ...}, ...}, "bleu": ...}``.
        """
        text = _as_text(data, self.config, "test", tgt_lang, task)
        if text is None:
            raise DataError("no evaluation data: pass pairs or set data.test / data.task")
        translator = self._require()
        known = translator.src_codec.tokenizer.symbols
        check_symbols(text.symbols, known, "the evaluation data")
        result = evaluate(translator, text.src, text.tgt, metrics, rendered=True)
        scores: dict = dict(result.scores)
        if text.parts:
            scores["tasks"] = {
                part.name: compute(
                    result.hypotheses[part.start : part.stop],
                    text.tgt[part.start : part.stop],
                    check_metrics(metrics),
                )
                for part in text.parts
            }
        return scores

    # ------------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> Path:
        """Write config, tokenizers, vocabularies and weights; :meth:`load` reads them."""
        translator = self._require()
        target = RunDir(directory)
        target.path.mkdir(parents=True, exist_ok=True)
        target.save_config(self.config)
        RunDir(self.run_dir).copy_codecs(self.config.data.joint_vocab, target)
        # the trained weights, never an int8 or bf16 inference copy of them
        save_checkpoint(target.best, translator.base_model, dump_config(self.config))
        return target.path

    @classmethod
    def load(cls, directory: str | Path, checkpoint: str = "best", device: str = "auto") -> Seq2Seq:
        """Load a directory written by :meth:`save` or ``seq2seq train``."""
        translator = Translator.from_run(directory, checkpoint, device)
        self = cls(RunDir(directory).config())
        self.translator = translator
        self.run_dir = Path(directory)
        return self
