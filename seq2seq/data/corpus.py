"""Reading parallel text from disk, with errors that name the file and line.

A corpus *spec* names the data in one of three ways:

* ``path.tsv`` (or ``.tsv.gz``): one pair per line, ``source<TAB>target``;
* ``path.jsonl`` (or ``.jsonl.gz``): one JSON record per line: a string ``"tgt"``, and
  ``"src"`` and/or ``"context"`` (with ``"speaker"``, ``"tgt_lang"``, ``"task"``; see
  :mod:`seq2seq.data.records`, whose :class:`~seq2seq.data.records.Rendering` turns
  each record into its source text);
* with ``dialogue_eou`` (``data.dialogue_eou``), one file of whole dialogues, one a
  line, each turn ending with that marker: every turn after the first is a record's
  target, with the turns before it as its context;
* anything else is a prefix: the files are ``PREFIX.<src_lang>`` and
  ``PREFIX.<tgt_lang>``, each optionally gzipped (``PREFIX.de.gz``).

Every problem a user can cause is raised as :class:`~seq2seq.errors.DataError`.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

from seq2seq.data.records import Record, Rendering, Turn, parse_record
from seq2seq.errors import DataError

logger = logging.getLogger("seq2seq")

_TSV_SUFFIXES = (".tsv", ".tsv.gz")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


@dataclass
class ParallelText:
    """Aligned source and target sentences, stripped and non-empty.

    Attributes:
        src: Source sentences.
        tgt: Target sentences, ``tgt[i]`` translating ``src[i]``.
        name: Human description, e.g. ``"train (data/train.de, data/train.en)"``.
        skipped_empty: Pairs dropped because either side was empty or whitespace-only.
        symbols: The tags and separators the rendering of its records wrote.
        parts: With ``data.tasks``, where each task's pairs lie (concatenated in order).
    """

    src: list[str]
    tgt: list[str]
    name: str
    skipped_empty: int
    symbols: tuple[str, ...] = ()
    parts: tuple[TextPart, ...] = field(default=())


@dataclass(frozen=True)
class TextPart:
    """The pairs ``start:stop`` of a :class:`ParallelText` that belong to one task."""

    name: str
    start: int
    stop: int


def corpus_files(
    spec: str | Path, src_lang: str, tgt_lang: str, dialogues: bool = False
) -> list[Path]:
    """The file(s) a corpus spec names.

    Args:
        spec: A ``.tsv``/``.jsonl`` file (optionally ``.gz``) or a prefix of a file pair.
        src_lang: Source language suffix, used for a prefix spec.
        tgt_lang: Target language suffix, used for a prefix spec.
        dialogues: ``spec`` is one file of whole dialogues.

    Returns:
        ``[file]`` for a TSV, JSONL or dialogue spec, ``[source_file, target_file]`` for
        a prefix.

    Raises:
        DataError: If a file does not exist; the message names every path tried.
    """
    path = Path(spec)
    if dialogues or _single_file_format(path) is not None:
        if not path.is_file():
            raise DataError(f"corpus file not found: {path}")
        return [path]
    found, tried = [], []
    for lang in (src_lang, tgt_lang):
        candidates = [Path(f"{path}.{lang}"), Path(f"{path}.{lang}.gz")]
        existing = [c for c in candidates if c.is_file()]
        if existing:
            found.append(existing[0])
        else:
            tried.append(" or ".join(str(c) for c in candidates))
    if tried:
        raise DataError(f"corpus '{spec}': file not found: {'; '.join(tried)}")
    return found


def read_parallel(
    spec: str | Path,
    src_lang: str,
    tgt_lang: str,
    name: str = "corpus",
    *,
    rendering: Rendering | None = None,
    task: str | None = None,
    dialogue_eou: str | None = None,
) -> ParallelText:
    """Read a parallel corpus, render its records, and drop pairs with an empty side.

    Args:
        spec: Corpus spec, see :func:`corpus_files`.
        src_lang: Source language suffix, used for a prefix spec.
        tgt_lang: Target language suffix, used for a prefix spec, and the ``tgt_lang``
            of records that name none (their ``<2xx>`` tag with ``data.lang_tags``).
        name: Short name for messages, e.g. ``"train"``.
        rendering: How records become source text; None: the source as it is.
        task: The ``task`` of records that name none (their ``<task:...>`` tag).
        dialogue_eou: ``spec`` is a file of whole dialogues whose turns end with it
            (unless it is a ``.tsv`` or ``.jsonl`` file, read as such).

    Returns:
        The usable pairs; a warning is logged if any pair was skipped.

    Raises:
        DataError: If a file is missing, not UTF-8, malformed (TSV/JSONL), if the two
            files of a pair differ in line count, or if no usable pair remains.
    """
    _, description, lazy = records_of(spec, src_lang, tgt_lang, name, dialogue_eou)
    records = list(lazy)
    rendering = rendering or Rendering()
    usable = [u for r in records if (u := usable_record(r, tgt_lang, task)) is not None]
    skipped = len(records) - len(usable)
    if not usable:
        raise DataError(f"no usable sentence pairs in {description}")
    if skipped:
        logger.warning(
            "%s: skipped %d sentence pair(s) with an empty source or target", description, skipped
        )
    try:
        src = [rendering.source(r).strip() for r in usable]
    except DataError as err:
        raise DataError(f"{description}: {err}") from None
    return ParallelText(
        src=src,
        tgt=[r.tgt.strip() for r in usable],
        name=description,
        skipped_empty=skipped,
        symbols=tuple(rendering.symbols(usable)),
    )


def records_of(
    spec: str | Path, src_lang: str, tgt_lang: str, name: str, dialogue_eou: str | None
) -> tuple[list[Path], str, Iterator[Record]]:
    """The files of a corpus spec, their description for messages, and a lazy reader of
    their records (one record in memory at a time)."""
    if _single_file_format(Path(spec)) is not None:
        dialogue_eou = None
    files = corpus_files(spec, src_lang, tgt_lang, dialogues=dialogue_eou is not None)
    description = f"{name} ({', '.join(str(f) for f in files)})"
    fmt = _single_file_format(files[0])
    if dialogue_eou is not None:
        records = _read_dialogues(files[0], dialogue_eou)
    elif fmt == "tsv":
        records = _read_tsv(files[0])
    elif fmt == "jsonl":
        records = _read_jsonl(files[0])
    else:
        records = _read_file_pair(files[0], files[1])
    return files, description, records


def usable_record(record: Record, tgt_lang: str, task: str | None) -> Record | None:
    """``record`` with the corpus's ``tgt_lang`` and ``task`` where it names none, or
    None when it has no target or no turn (an empty pair, skipped)."""
    if record.tgt is None or not record.tgt.strip() or not record.turns():
        return None
    if (record.tgt_lang or not tgt_lang) and (record.task or not task):
        return record  # (no copy: this runs for every pair of a corpus)
    return replace(record, tgt_lang=record.tgt_lang or tgt_lang, task=record.task or task)


def read_lines(path: str | Path) -> list[str]:
    """Read a monolingual text file, one sentence per line.

    Empty lines are kept so that outputs written for them stay line-aligned with the input.

    Args:
        path: A UTF-8 text file, optionally gzipped (``.gz``).

    Returns:
        The lines without their line ending (``\\n`` or ``\\r\\n``); no other stripping.

    Raises:
        DataError: If the file is missing or unreadable, or a line is not valid UTF-8.
    """
    return [line for _, line in _iter_lines(Path(path))]


def read_stream(stream: BinaryIO, name: str = "<stdin>") -> list[str]:
    """Like :func:`read_lines`, for an open binary stream such as ``sys.stdin.buffer``.

    Raises:
        DataError: If a line is not valid UTF-8 (naming ``name`` and the line).
    """
    return [decode_line(name, number, raw) for number, raw in enumerate(stream, start=1)]


def _single_file_format(path: Path) -> str | None:
    """``"tsv"`` or ``"jsonl"`` if ``path`` names a one-file corpus, else ``None``."""
    lowered = str(path).lower()
    if lowered.endswith(_TSV_SUFFIXES):
        return "tsv"
    if lowered.endswith(_JSONL_SUFFIXES):
        return "jsonl"
    return None


def _open_binary(path: Path) -> BinaryIO:
    """Open ``path`` for binary reading, through gzip if it ends in ``.gz``."""
    try:
        if path.suffix.lower() == ".gz":
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line, without its line ending.

    Lines are split on ``b"\\n"`` only: decoding whole files with ``str.splitlines``
    would also split on U+2028, U+0085 etc., silently misaligning parallel files.

    Raises:
        DataError: If the file cannot be opened or decompressed, or a line is not UTF-8.
    """
    number = 0
    with _open_binary(path) as stream:
        try:
            for number, raw in enumerate(stream, start=1):
                yield number, decode_line(path, number, raw)
        except (OSError, EOFError, zlib.error) as error:
            # Corrupt or truncated gzip data surfaces only while reading.
            raise DataError(f"{path}, line {number + 1}: cannot read file ({error})") from None


def decode_line(path: Path | str, number: int, raw: bytes) -> str:
    """Decode one raw line as UTF-8 and drop its ``\\n`` or ``\\r\\n`` ending."""
    if raw.endswith(b"\n"):
        raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = raw[error.start]
        raise DataError(
            f"{path}, line {number}: invalid UTF-8 (byte 0x{byte:02x} at byte offset "
            f"{error.start}); re-encode the file as UTF-8"
        ) from None
    # Editors on Windows often start UTF-8 files with a byte-order mark.
    return text.removeprefix("\ufeff") if number == 1 else text


def _read_file_pair(src_path: Path, tgt_path: Path) -> Iterator[Record]:
    """Read two line-aligned files in step; their line counts must match."""
    src_lines, tgt_lines = _iter_lines(src_path), _iter_lines(tgt_path)
    count = 0
    for src, tgt in itertools.zip_longest(src_lines, tgt_lines):
        if src is None or tgt is None:
            # One file ended first: count the rest of the other for the message.
            longer = src_lines if tgt is None else tgt_lines
            n_longer = count + 1 + sum(1 for _ in longer)
            n_src, n_tgt = (n_longer, count) if tgt is None else (count, n_longer)
            raise DataError(
                f"parallel files differ in length: {src_path} has {n_src} lines but "
                f"{tgt_path} has {n_tgt} lines"
            )
        count += 1
        yield Record(src[1], tgt[1])


def _read_dialogues(path: Path, eou: str) -> Iterator[Record]:
    """One dialogue a line, turns ending with ``eou``: a record for every reply."""
    for number, line in _iter_lines(path):
        turns = [" ".join(t.split()) for t in line.split(eou)]
        if turns and not turns[-1]:
            turns.pop()  # the marker ends the last turn too
        if line.strip() and eou not in line:
            raise DataError(
                f"{path}, line {number}: no {eou!r} in the line; data.dialogue_eou says "
                "each turn ends with it"
            )
        context = tuple(Turn(t) for t in turns)
        for i in range(1, len(turns)):
            yield Record(tgt=turns[i], context=context[:i])


def _read_tsv(path: Path) -> Iterator[Record]:
    """Read ``source<TAB>target`` lines; a blank line counts as an empty pair."""
    for number, line in _iter_lines(path):
        if not line.strip():
            yield Record("", "")
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(
                f"{path}, line {number}: expected 2 tab-separated columns (source, target), "
                f"found {len(fields)}"
            )
        yield Record(fields[0], fields[1])


def _read_jsonl(path: Path) -> Iterator[Record]:
    """Read one record per line (a target is required); blank lines are empty pairs."""
    for number, line in _iter_lines(path):
        if not line.strip():
            yield Record("", "")
            continue
        where = f"{path}, line {number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: invalid JSON ({error.msg})") from None
        record = parse_record(obj, where)
        if record.tgt is None:
            raise DataError(f'{where}: the record has no "tgt" (the target text) field')
        yield record
