"""Reading parallel text from disk, with errors that name the file and line.

A corpus *spec* names the data in one of three ways:

* ``path.tsv`` (or ``.tsv.gz``): one pair per line, ``source<TAB>target``;
* ``path.jsonl`` (or ``.jsonl.gz``): one JSON object per line with string keys
  ``"src"`` and ``"tgt"``;
* anything else is a prefix: the files are ``PREFIX.<src_lang>`` and
  ``PREFIX.<tgt_lang>``, each optionally gzipped (``PREFIX.de.gz``).

Every problem a user can cause is raised as :class:`~seq2seq.errors.DataError`.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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
    """

    src: list[str]
    tgt: list[str]
    name: str
    skipped_empty: int


def corpus_files(spec: str | Path, src_lang: str, tgt_lang: str) -> list[Path]:
    """The file(s) a corpus spec names.

    Args:
        spec: A ``.tsv``/``.jsonl`` file (optionally ``.gz``) or a prefix of a file pair.
        src_lang: Source language suffix, used for a prefix spec.
        tgt_lang: Target language suffix, used for a prefix spec.

    Returns:
        ``[file]`` for a TSV or JSONL spec, ``[source_file, target_file]`` for a prefix.

    Raises:
        DataError: If a file does not exist; the message names every path tried.
    """
    path = Path(spec)
    if _single_file_format(path) is not None:
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
    spec: str | Path, src_lang: str, tgt_lang: str, name: str = "corpus"
) -> ParallelText:
    """Read a parallel corpus, strip each side and drop pairs with an empty side.

    Args:
        spec: Corpus spec, see :func:`corpus_files`.
        src_lang: Source language suffix, used for a prefix spec.
        tgt_lang: Target language suffix, used for a prefix spec.
        name: Short name for messages, e.g. ``"train"``.

    Returns:
        The usable pairs; a warning is logged if any pair was skipped.

    Raises:
        DataError: If a file is missing, not UTF-8, malformed (TSV/JSONL), if the two
            files of a pair differ in line count, or if no usable pair remains.
    """
    files = corpus_files(spec, src_lang, tgt_lang)
    description = f"{name} ({', '.join(str(f) for f in files)})"
    fmt = _single_file_format(files[0])
    if fmt == "tsv":
        pairs = _read_tsv(files[0])
    elif fmt == "jsonl":
        pairs = _read_jsonl(files[0])
    else:
        pairs = _read_file_pair(files[0], files[1])
    src, tgt = [], []
    for source, target in pairs:
        source, target = source.strip(), target.strip()
        if source and target:
            src.append(source)
            tgt.append(target)
    skipped = len(pairs) - len(src)
    if not src:
        raise DataError(f"no usable sentence pairs in {description}")
    if skipped:
        logger.warning(
            "%s: skipped %d sentence pair(s) with an empty source or target", description, skipped
        )
    return ParallelText(src=src, tgt=tgt, name=description, skipped_empty=skipped)


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
    return [_decode_line(name, number, raw) for number, raw in enumerate(stream, start=1)]


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
                yield number, _decode_line(path, number, raw)
        except (OSError, EOFError, zlib.error) as error:
            # Corrupt or truncated gzip data surfaces only while reading.
            raise DataError(f"{path}, line {number + 1}: cannot read file ({error})") from None


def _decode_line(path: Path | str, number: int, raw: bytes) -> str:
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


def _read_file_pair(src_path: Path, tgt_path: Path) -> list[tuple[str, str]]:
    """Read two line-aligned files; their line counts must match."""
    src = [line for _, line in _iter_lines(src_path)]
    tgt = [line for _, line in _iter_lines(tgt_path)]
    if len(src) != len(tgt):
        raise DataError(
            f"parallel files differ in length: {src_path} has {len(src)} lines but "
            f"{tgt_path} has {len(tgt)} lines"
        )
    return list(zip(src, tgt, strict=True))


def _read_tsv(path: Path) -> list[tuple[str, str]]:
    """Read ``source<TAB>target`` lines; a blank line counts as an empty pair."""
    pairs = []
    for number, line in _iter_lines(path):
        if not line.strip():
            pairs.append(("", ""))
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError(
                f"{path}, line {number}: expected 2 tab-separated columns (source, target), "
                f"found {len(fields)}"
            )
        pairs.append((fields[0], fields[1]))
    return pairs


def _read_jsonl(path: Path) -> list[tuple[str, str]]:
    """Read one ``{"src": ..., "tgt": ...}`` object per line; blank lines are empty pairs."""
    pairs = []
    for number, line in _iter_lines(path):
        if not line.strip():
            pairs.append(("", ""))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: invalid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not all(
            isinstance(record.get(key), str) for key in ("src", "tgt")
        ):
            raise DataError(
                f'{path}, line {number}: expected an object with string keys "src" and "tgt"'
            )
        pairs.append((record["src"], record["tgt"]))
    return pairs
