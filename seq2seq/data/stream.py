"""Training corpora too large for memory, read as a stream of pairs.

A :class:`CorpusStream` reads one corpus spec (a file pair, ``.tsv``, ``.jsonl`` or a
file of dialogues, as :mod:`seq2seq.data.corpus` does) one record at a time and yields
its rendered pairs. Nothing holds the whole corpus: a *survey* pass counts the pairs,
gathers the symbols the rendering writes and draws a seeded sample to fit tokenizers
on; then :func:`seq2seq.data.cache.encode_stream` writes the token ids to a
memory-mapped cache on disk, and :class:`seq2seq.training.order.StreamOrder` draws
batches from it window by window.

A stream is identified by its files' size, modification and change times, inode and a
hash of their first and last MiB (never by reading them whole), plus the settings that
change what is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from seq2seq.data.corpus import ParallelText, records_of, usable_record
from seq2seq.data.records import Record, Rendering
from seq2seq.errors import DataError
from seq2seq.files import atomic_write

log = logging.getLogger("seq2seq")

# data.stream: auto streams training files larger than this in all.
STREAM_AUTO_BYTES = 1 << 30
_EDGE_BYTES = 1 << 20  # hashed at each end of every file for the fingerprint
_SURVEY_LOG_EVERY = 1_000_000


@dataclass(frozen=True)
class Survey:
    """What one pass over a stream found.

    Attributes:
        pairs: usable pairs (both sides non-empty); None when the stream was not read
            (nothing to sample, and it cannot hold symbols).
        skipped_empty: pairs skipped for an empty side.
        symbols: the tags and separators the rendering wrote, in order of appearance.
    """

    pairs: int | None
    skipped_empty: int
    symbols: tuple[str, ...]


class CorpusStream:
    """The rendered pairs of a corpus spec, read lazily; see the module docstring.

    Args:
        spec: a corpus spec (:func:`seq2seq.data.corpus.corpus_files`).
        src_lang, tgt_lang: language suffixes of a file pair (``tgt_lang`` is also the
            ``<2xx>`` of records that name none).
        name: short name for messages, e.g. ``"train"``.
        rendering: how records become source text.
        dialogue_eou: ``spec`` is a file of whole dialogues.

    Raises:
        DataError: a file of the spec does not exist.
    """

    def __init__(
        self,
        spec: str | Path,
        src_lang: str,
        tgt_lang: str,
        name: str = "corpus",
        *,
        rendering: Rendering | None = None,
        dialogue_eou: str | None = None,
    ) -> None:
        self.spec, self.src_lang, self.tgt_lang = str(spec), src_lang, tgt_lang
        self.rendering = rendering or Rendering()
        self.dialogue_eou = dialogue_eou
        self.files, self.name, _ = records_of(spec, src_lang, tgt_lang, name, dialogue_eou)
        self.survey: Survey | None = None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        """The rendered ``(source, target)`` pairs, skipping those with an empty side.

        Raises:
            DataError: from the reader, naming the file and line.
        """
        for record in self._usable_records():
            yield self._render(record), record.tgt.strip()

    def _records(self) -> Iterator[Record]:
        """The records of the spec, read anew from the start."""
        spec, langs, eou = self.spec, (self.src_lang, self.tgt_lang), self.dialogue_eou
        return records_of(spec, *langs, self.name, eou)[2]

    def _usable_records(self) -> Iterator[Record]:
        for record in self._records():
            if (usable := self._usable(record)) is not None:
                yield usable

    def _usable(self, record: Record) -> Record | None:
        # The corpus's tgt_lang matters for a <2xx> tag only: no copy of every record else.
        return usable_record(record, self.tgt_lang if self.rendering.lang_tags else None, None)

    @property
    def writes_no_symbols(self) -> bool:
        """Whether rendering cannot write a symbol here: one-turn records (a file pair or
        TSV) and no tags."""
        one_turn = self.dialogue_eou is None and not str(self.files[0]).lower().endswith(
            (".jsonl", ".jsonl.gz")
        )
        return one_turn and not (self.rendering.lang_tags or self.rendering.task_tags)

    def _render(self, record: Record) -> str:
        try:
            return self.rendering.source(record).strip()
        except DataError as err:
            raise DataError(f"{self.name}: {err}") from None

    def fingerprint(self) -> str:
        """A hex digest of the files (size, mtime, first and last MiB) and reader settings."""
        h = hashlib.sha256()
        settings = (self.src_lang, self.tgt_lang, self.dialogue_eou, repr(self.rendering))
        h.update(repr(settings).encode())
        for path in self.files:
            try:
                stat = path.stat()
                # ctime and inode too: tools that keep mtime (cp -p, rsync -t) change them
                when = (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
                h.update(f"{path.resolve()}\0{when}\0".encode())
                with open(path, "rb") as f:
                    h.update(f.read(_EDGE_BYTES))
                    f.seek(max(0, stat.st_size - _EDGE_BYTES))
                    h.update(f.read(_EDGE_BYTES))
            except OSError as err:
                raise DataError(f"cannot read {path}: {err.strerror or err}") from None
        return h.hexdigest()[:24]

    def size_bytes(self) -> int:
        """The files' size on disk, in all."""
        return sum(path.stat().st_size for path in self.files)

    def surveyed(self, cache_dir: Path | None, sample: int = 0, seed: int = 0) -> ParallelText:
        """Survey the stream (:attr:`survey`) and return a uniform sample of its pairs.

        The sample is what tokenizers are fitted on (``data.stream_sample`` pairs); its
        ``symbols`` are those of the whole stream. A survey without a sample is kept in
        ``cache_dir`` and read back instead of reading the corpus again.

        Args:
            cache_dir: where the survey is kept (the run's ``cache/``); None: nowhere.
            sample: how many pairs to draw (reservoir sampling, seeded); 0: none.
            seed: the sampling seed.

        Raises:
            DataError: from the reader, or when the stream has no usable pair.
        """
        if not sample and self.writes_no_symbols:
            self.survey = Survey(None, 0, ())  # nothing to learn from a pass
            return self._text([], [])
        path = cache_dir / f"{self.fingerprint()}.survey.json" if cache_dir else None
        if not sample and path is not None and path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            self.survey = Survey(saved["pairs"], saved["skipped_empty"], tuple(saved["symbols"]))
            return self._text([], [])
        rng, kept, symbols = random.Random(seed), [], {}
        pairs = total = 0
        for record in self._records():
            total += 1
            usable = self._usable(record)
            if usable is None:
                continue
            symbols.update(dict.fromkeys(self.rendering.symbols([usable])))
            pairs += 1
            if pairs % _SURVEY_LOG_EVERY == 0:
                log.info("%s: read %d pairs", self.name, pairs)
            # Algorithm R: every pair ends in the sample with probability sample / pairs.
            if pairs <= sample:
                kept.append((self._render(usable), usable.tgt.strip()))
            elif sample and (slot := rng.randrange(pairs)) < sample:
                kept[slot] = (self._render(usable), usable.tgt.strip())
        if not pairs:
            raise DataError(f"no usable sentence pairs in {self.name}")
        if total > pairs:
            log.warning(
                "%s: skipped %d sentence pair(s) with an empty source or target",
                self.name,
                total - pairs,
            )
        self.survey = Survey(pairs, total - pairs, tuple(symbols))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            body = json.dumps(self.survey.__dict__ | {"symbols": list(symbols)})
            atomic_write(path, lambda tmp: Path(tmp).write_text(body, encoding="utf-8"))
        return self._text([s for s, _ in kept], [t for _, t in kept])

    def _text(self, src: list[str], tgt: list[str]) -> ParallelText:
        assert self.survey is not None
        return ParallelText(
            src,
            tgt,
            f"{self.name}, a sample of {len(src)} pairs",
            self.survey.skipped_empty,
            self.survey.symbols,
        )
