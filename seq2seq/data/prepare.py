"""From a data config to text splits, trained tokenizers and encoded examples.

A run directory holds the tokenizers' files and vocabularies (one set per side, or one
shared set with ``data.joint_vocab``; :class:`~seq2seq.rundir.RunDir` names them), so
that inference needs nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path

from seq2seq.config import DataConfig
from seq2seq.data.batching import Examples, cut_sources, filter_long
from seq2seq.data.cache import encode_cached
from seq2seq.data.corpus import ParallelText, TextPart, read_parallel
from seq2seq.data.records import Record, Rendering, SourceCut
from seq2seq.data.stream import STREAM_AUTO_BYTES, CorpusStream
from seq2seq.data.tasks import make_task
from seq2seq.data.tokenizers import TextCodec, Tokenizer, load_tokenizer, train_tokenizer
from seq2seq.data.vocab import Vocab
from seq2seq.errors import ConfigError, DataError
from seq2seq.rundir import RunDir

log = logging.getLogger("seq2seq")

_TASK_SPLIT_SHARE = {"train": 1.0, "valid": 0.05, "test": 0.05}


def load_split(cfg: DataConfig, split: str) -> ParallelText | None:
    """The ``train``/``valid``/``test`` text of a config, rendered (see
    :class:`~seq2seq.data.records.Rendering`): a built-in task, files, or with
    ``data.tasks`` every task's pairs one after the other (``ParallelText.parts``).

    Returns None when the config names no such split.

    Raises:
        ConfigError: no data at all is configured for training.
        DataError: from the corpus reader.
    """
    if cfg.tasks:
        return _load_tasks(cfg, split)
    if cfg.task is not None:
        return _builtin(cfg, cfg.task, split, cfg.tgt_lang, None)
    spec = getattr(cfg, split)
    if spec is None:
        if split == "train":
            raise ConfigError(
                "no training data: set data.train (a file prefix, .tsv or "
                ".jsonl), data.task (dates, reverse, sort, addition) or data.tasks"
            )
        return None
    return read_parallel(
        spec,
        cfg.src_lang,
        cfg.tgt_lang,
        name=split,
        rendering=Rendering.of(cfg),
        dialogue_eou=cfg.dialogue_eou,
    )


def load_training(cfg: DataConfig) -> ParallelText | CorpusStream:
    """The training data: read whole (:func:`load_split`), or as a :class:`CorpusStream`
    with ``data.stream`` (``auto``: when ``data.train``'s files are over 1 GiB in all).

    Raises:
        ConfigError: no training data is configured.
        DataError: a file is missing, or from the corpus reader.
    """
    if not cfg.stream or cfg.train is None or cfg.tasks or cfg.task is not None:
        return load_split(cfg, "train")
    stream = CorpusStream(
        cfg.train,
        cfg.src_lang,
        cfg.tgt_lang,
        "train",
        rendering=Rendering.of(cfg),
        dialogue_eou=cfg.dialogue_eou,
    )
    size = stream.size_bytes()
    if cfg.stream == "auto" and size <= STREAM_AUTO_BYTES:
        return load_split(cfg, "train")
    log.info("%s: streamed (%.2f GB; data.stream=%s)", stream.name, size / 1e9, cfg.stream)
    return stream


def fitting_text(
    cfg: DataConfig,
    train: ParallelText | CorpusStream,
    cache_dir: Path | None,
    *,
    fitted: bool = False,
    seed: int = 0,
) -> ParallelText:
    """What the tokenizers are fitted on and the rendered symbols are read from: the
    training text itself, or for a stream a seeded sample of ``data.stream_sample``
    pairs carrying the whole stream's symbols (no sample when nothing is fitted: the
    tokenizers are ``fitted`` already, or ``data.sp_model`` is used as it is)."""
    if isinstance(train, ParallelText):
        return train
    fitted = fitted or (cfg.tokenizer == "sentencepiece" and cfg.sp_model is not None)
    text = train.surveyed(cache_dir, 0 if fitted else cfg.stream_sample, seed)
    if not fitted:
        log.info("fitting the tokenizers on %s", text.name)
    return text


def _builtin(
    cfg: DataConfig, task: str, split: str, tgt_lang: str, name: str | None
) -> ParallelText:
    """A split of a built-in generated task, rendered like any records."""
    size = max(1, int(cfg.task_size * _TASK_SPLIT_SHARE[split]))
    src, tgt = make_task(task, split, size, cfg.task_seed)
    rendering = Rendering.of(cfg)
    records = [Record(s, t, tgt_lang=tgt_lang, task=name) for s, t in zip(src, tgt, strict=True)]
    rendered = [rendering.source(r) for r in records]
    symbols = tuple(rendering.symbols(records))
    return ParallelText(rendered, tgt, f"{split} (built-in task '{task}')", 0, symbols)


def _load_tasks(cfg: DataConfig, split: str) -> ParallelText | None:
    """Every task's ``split`` (tasks without one are left out), concatenated."""
    texts: list[tuple[str, ParallelText]] = []
    for task in cfg.tasks:
        src_lang, tgt_lang = task.src_lang or cfg.src_lang, task.tgt_lang or cfg.tgt_lang
        if task.task is not None:
            text = _builtin(cfg, task.task, split, tgt_lang, task.name)
        elif (spec := getattr(task, split, None)) is not None:
            text = read_parallel(
                spec,
                src_lang,
                tgt_lang,
                name=f"{split} of task {task.name}",
                rendering=Rendering.of(cfg),
                task=task.name,
                dialogue_eou=cfg.dialogue_eou,
            )
        else:
            continue
        texts.append((task.name, text))
    if not texts:
        return None
    parts, start = [], 0
    for name, text in texts:
        parts.append(TextPart(name, start, start + len(text.src)))
        start += len(text.src)
    return ParallelText(
        src=[s for _, t in texts for s in t.src],
        tgt=[s for _, t in texts for s in t.tgt],
        name=f"{split} ({', '.join(t.name for _, t in texts)})",
        skipped_empty=sum(t.skipped_empty for _, t in texts),
        symbols=tuple(dict.fromkeys(s for _, t in texts for s in t.symbols)),
        parts=tuple(parts),
    )


def _fit_side(cfg: DataConfig, texts: list[str], run: RunDir, name: str) -> TextCodec:
    """Train (or copy a given) tokenizer on ``texts`` and build its vocabulary."""
    tokenizer: Tokenizer
    if cfg.tokenizer == "sentencepiece" and cfg.sp_model is not None:
        tokenizer = load_tokenizer("sentencepiece", Path(cfg.sp_model), cfg.symbols)
        tokenizer.save(run.tokenizer_file(name))
    else:
        tokenizer = train_tokenizer(
            cfg.tokenizer,
            texts,
            run.tokenizer_file(name),
            vocab_size=cfg.vocab_size,
            model_type=cfg.sp_model_type,
            symbols=cfg.symbols,
        )
    pieces = tokenizer.vocab_pieces()
    if pieces is not None:
        vocab = Vocab.from_pieces(pieces)
    else:
        max_size = cfg.vocab_size if cfg.tokenizer == "word" else None
        tokenized = (tokenizer.tokenize(t) for t in texts)
        vocab = Vocab.build(tokenized, max_size, cfg.min_freq, reserved=cfg.symbols)
    vocab.save(run.vocab_file(name))
    log.info("%s vocabulary: %d entries (%s tokenizer)", name, len(vocab), cfg.tokenizer)
    return TextCodec(tokenizer, vocab)


def fit_codecs(cfg: DataConfig, train: ParallelText, run: RunDir) -> tuple[TextCodec, TextCodec]:
    """Train tokenizers and vocabularies on the training text; save them in the run."""
    run.path.mkdir(parents=True, exist_ok=True)
    src_name, tgt_name = run.codec_names(cfg.joint_vocab)
    if cfg.joint_vocab:
        codec = _fit_side(cfg, train.src + train.tgt, run, src_name)
        return codec, codec
    return (
        _fit_side(cfg, train.src, run, src_name),
        _fit_side(cfg, train.tgt, run, tgt_name),
    )


def load_codecs(cfg: DataConfig, run: RunDir) -> tuple[TextCodec, TextCodec]:
    """Load the tokenizers and vocabularies a run directory (or an export) holds.

    Raises:
        CheckpointError: a file is missing or corrupt.
    """
    codecs = []
    for name in dict.fromkeys(run.codec_names(cfg.joint_vocab)):
        model_file = run.tokenizer_file(name) if cfg.tokenizer == "sentencepiece" else None
        tokenizer = load_tokenizer(cfg.tokenizer, model_file, cfg.symbols)
        codecs.append(TextCodec(tokenizer, Vocab.load(run.vocab_file(name))))
    return codecs[0], codecs[-1]


def encode(
    text: ParallelText,
    src: TextCodec,
    tgt: TextCodec,
    max_len: int | None,
    cache_dir: Path | None = None,
    *,
    cut: SourceCut | None = None,
    max_tgt_len: int | None = None,
) -> Examples:
    """Encode sentence pairs (through the cache in ``cache_dir`` when given).

    With a ``cut`` (``data.max_src_len``) longer sources are cut and keep their pair;
    pairs whose target exceeds ``max_tgt_len`` (else ``max_len``), or without a cut
    whose source exceeds ``max_len``, are dropped (and counted). Each example's
    ``group`` is the index of its part (task) of ``text``.

    Raises:
        DataError: no pairs are left.
    """
    examples = encode_cached(text, src, tgt, cache_dir)
    if text.parts:
        examples.group = [i for i, p in enumerate(text.parts) for _ in range(p.start, p.stop)]
    cutting = cut is not None and cut.limit is not None
    if cutting:
        examples = cut_sources(examples, cut, text.name)
    if max_len or max_tgt_len:
        src_limit = None if cutting else max_len  # cut sources need no limit
        examples = filter_long(examples, src_limit, text.name, max_tgt_len=max_tgt_len or max_len)
    if not len(examples):
        raise DataError(
            f"{text.name}: no sentence pairs left within data.max_len={max_len}"
            + (f" / data.max_tgt_len={max_tgt_len}" if max_tgt_len else "")
        )
    return examples
