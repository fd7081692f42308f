"""Encoded data cached in the run directory: tokenize once, reuse on resume and reruns.

The cache key hashes the text itself and everything that decides its token ids (the
tokenizer model and the vocabulary), so a stale cache cannot be used by mistake. Ids
are stored as flat int32 tensors with offsets in a safetensors file (no pickle).

A streamed corpus (:mod:`seq2seq.data.stream`) is never whole in memory: its ids are
written chunk by chunk to raw int32/int64 files (``src.ids``, ``src.offsets``, the same
for ``tgt``) in a directory keyed by the stream's fingerprint, and memory-mapped back
(:class:`MappedRows`), so that only the rows a batch reads are loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seq2seq.data.batching import Examples, report_cut, report_dropped
from seq2seq.data.corpus import ParallelText
from seq2seq.data.records import SourceCut
from seq2seq.data.stream import CorpusStream
from seq2seq.data.tokenizers import TextCodec
from seq2seq.errors import DataError
from seq2seq.files import atomic_write

log = logging.getLogger("seq2seq")


def _codecs_hash(src: TextCodec, tgt: TextCodec) -> hashlib._Hash:
    """A hash fed with both sides' tokenizer and vocabulary."""
    h = hashlib.sha256()
    for codec in (src, tgt):
        h.update(codec.tokenizer.fingerprint())
        h.update("\x00".join(codec.vocab.pieces).encode())
    return h


def fingerprint(text: ParallelText, src: TextCodec, tgt: TextCodec) -> str:
    """A hex digest of the sentences and of both sides' tokenizer and vocabulary."""
    h = _codecs_hash(src, tgt)
    for side in (text.src, text.tgt):
        h.update(len(side).to_bytes(8, "little"))
        for sentence in side:  # length-prefixed: sentences may contain any character
            data = sentence.encode()
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()[:24]


def _flatten(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    flat = torch.tensor([i for r in rows for i in r], dtype=torch.int32)
    return flat, offsets


def _unflatten(flat: torch.Tensor, offsets: torch.Tensor) -> list[list[int]]:
    ids, bounds = flat.tolist(), offsets.tolist()
    return [ids[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]


def _save(path: Path, examples: Examples) -> None:
    tensors = {}
    for name, rows in (("src", examples.src), ("tgt", examples.tgt)):
        tensors[f"{name}_ids"], tensors[f"{name}_offsets"] = _flatten(rows)
    atomic_write(path, lambda tmp: save_file(tensors, tmp))


def _load(path: Path) -> Examples | None:
    try:
        t = load_file(str(path))
        return Examples(
            _unflatten(t["src_ids"], t["src_offsets"]), _unflatten(t["tgt_ids"], t["tgt_offsets"])
        )
    except (SafetensorError, OSError, KeyError) as err:
        log.warning("ignoring unreadable data cache %s (%s)", path, err)
        return None


def encode_cached(
    text: ParallelText, src: TextCodec, tgt: TextCodec, cache_dir: Path | None
) -> Examples:
    """Token ids of ``text``, from ``cache_dir`` when it holds them, else encoded and stored.

    Args:
        text: the sentence pairs.
        src, tgt: each side's tokenizer and vocabulary.
        cache_dir: where cached ids live (the run directory's ``cache/``); None: no cache.
    """
    path = None
    if cache_dir is not None:
        path = cache_dir / f"{fingerprint(text, src, tgt)}.safetensors"
        if path.is_file() and (cached := _load(path)) is not None:
            log.info("%s: token ids from the cache %s", text.name, path.name)
            return cached
    examples = Examples([src.encode(s) for s in text.src], [tgt.encode(t) for t in text.tgt])
    if path is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        _save(path, examples)
    return examples


class MappedRows(Sequence[list[int]]):
    """Rows of token ids in a memory-mapped cache: ``rows[i]`` reads row ``i`` from disk.

    Args:
        ids: every row's ids one after the other (int32).
        offsets: where row ``i`` starts, ``offsets[i]``, and ends, ``offsets[i + 1]`` (int64).
    """

    def __init__(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        self.ids, self.offsets = ids, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):  # type: ignore[override]
        return self.ids[self.offsets[i] : self.offsets[i + 1]].tolist()

    def lengths(self, start: int, stop: int) -> np.ndarray:
        """The lengths of rows ``start:stop``."""
        return np.diff(self.offsets[start : stop + 1])


_SIDES = ("src", "tgt")
_CHUNK_PAIRS = 16384  # pairs encoded (and written) at a time
_LOG_EVERY = 1_000_000


def encode_stream(
    stream: CorpusStream,
    src: TextCodec,
    tgt: TextCodec,
    cache_dir: Path,
    *,
    cut: SourceCut,
    max_len: int | None,
    max_tgt_len: int | None,
) -> Examples:
    """The token ids of a stream, memory-mapped from ``cache_dir`` (encoded there first,
    in chunks, when the cache does not hold them yet).

    Pairs are cut and dropped as :func:`seq2seq.data.prepare.encode` does, before they
    are written. The cache directory is named after the stream's fingerprint, both
    codecs and these settings, and appears whole or not at all.

    Raises:
        DataError: no pair is left, or the cache cannot be written.
    """
    h = _codecs_hash(src, tgt)
    cut_key = (cut.limit, cut.oldest_first, cut.separator, sorted(cut.tags))
    h.update(repr((stream.fingerprint(), cut_key, max_len, max_tgt_len)).encode())
    path = cache_dir / f"stream-{h.hexdigest()[:24]}"
    if not (path / "meta.json").is_file():
        _build_stream_cache(stream, src, tgt, path, cut, max_len, max_tgt_len)
    meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    log.info("%s: %d pairs memory-mapped from the cache %s", stream.name, meta["pairs"], path.name)
    rows = [
        MappedRows(_map(path / f"{side}.ids", np.int32), _map(path / f"{side}.offsets", np.int64))
        for side in _SIDES
    ]
    return Examples(*rows)


def _map(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # numpy cannot map an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _build_stream_cache(
    stream: CorpusStream,
    src: TextCodec,
    tgt: TextCodec,
    path: Path,
    cut: SourceCut,
    max_len: int | None,
    max_tgt_len: int | None,
) -> None:
    """Encode ``stream`` into ``path`` (see :func:`encode_stream`), through a partial
    directory renamed into place when complete."""
    cutting = cut.limit is not None
    src_limit = None if cutting else max_len  # cut sources need no limit
    tgt_limit = max_tgt_len or max_len
    part = path.with_name(f"{path.name}.part-{os.getpid()}")
    _remove_abandoned_parts(path)
    started, read, n_cut = time.perf_counter(), 0, 0
    try:
        part.mkdir(parents=True)
        with contextlib.ExitStack() as files:
            out = {side: _RowWriter(part, side, files) for side in _SIDES}
            pairs = iter(stream)
            while chunk := list(itertools.islice(pairs, _CHUNK_PAIRS)):
                src_rows = src.encode_many([s for s, _ in chunk])
                tgt_rows = tgt.encode_many([t for _, t in chunk])
                kept_src, kept_tgt = [], []
                for s, t in zip(src_rows, tgt_rows, strict=True):
                    if cutting and len(s) > cut.limit:
                        s, n_cut = cut(s), n_cut + 1
                    if (src_limit is None or len(s) <= src_limit) and (
                        tgt_limit is None or len(t) <= tgt_limit
                    ):
                        kept_src.append(s)
                        kept_tgt.append(t)
                out["src"].append(kept_src)
                out["tgt"].append(kept_tgt)
                read += len(chunk)
                if read // _LOG_EVERY > (read - len(chunk)) // _LOG_EVERY:
                    rate = read / (time.perf_counter() - started)
                    log.info("%s: encoded %d pairs (%.0f pairs/s)", stream.name, read, rate)
        kept = out["src"].rows
        if not kept:
            raise DataError(
                f"{stream.name}: no sentence pairs left within data.max_len={max_len}"
                + (f" / data.max_tgt_len={max_tgt_len}" if max_tgt_len else "")
            )
        seconds = time.perf_counter() - started
        meta = {"pairs": kept, "read": read, "cut": n_cut, "seconds": round(seconds, 1)}
        (part / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        if not (path / "meta.json").is_file():  # else another process finished it first
            shutil.rmtree(path, ignore_errors=True)  # an unfinished cache of the same key
            part.rename(path)
    except OSError as err:
        if not (path / "meta.json").is_file():  # (a rename that lost a race is no error)
            raise DataError(f"cannot write the data cache {part}: {err}") from None
    finally:
        shutil.rmtree(part, ignore_errors=True)
    if n_cut:
        report_cut(stream.name, n_cut, read, cut.limit)
    report_dropped(stream.name, read - kept, read, src_limit, tgt_limit)
    log.info("%s: %d pairs encoded into the cache in %.0f s", stream.name, kept, seconds)


def _remove_abandoned_parts(path: Path) -> None:
    """Remove partial caches of ``path`` whose building process is gone (killed)."""
    for part in path.parent.glob(f"{path.name}.part-*"):
        pid = int(part.name.rsplit("-", 1)[1])
        try:
            if pid != os.getpid():
                os.kill(pid, 0)  # still building: leave it
                continue
        except ProcessLookupError:
            log.info("removing the abandoned partial cache %s", part)
        except PermissionError:
            continue
        shutil.rmtree(part, ignore_errors=True)


class _RowWriter:
    """Appends rows of ids to ``SIDE.ids`` and their end offsets to ``SIDE.offsets``."""

    def __init__(self, directory: Path, side: str, files: contextlib.ExitStack) -> None:
        self.ids = files.enter_context(open(directory / f"{side}.ids", "wb"))
        self.offsets = files.enter_context(open(directory / f"{side}.offsets", "wb"))
        np.zeros(1, dtype=np.int64).tofile(self.offsets)
        self.end = self.rows = 0

    def append(self, rows: list[list[int]]) -> None:
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32).tofile(self.ids)
        (self.end + np.cumsum(lengths)).tofile(self.offsets)
        self.end += int(lengths.sum())
        self.rows += len(rows)
