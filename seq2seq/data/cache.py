"""Encoded data cached in the run directory: tokenize once, reuse on resume and reruns.

The cache key hashes the text itself and everything that decides its token ids (the
tokenizer model and the vocabulary), so a stale cache cannot be used by mistake. Ids
are stored as flat int32 tensors with offsets in a safetensors file (no pickle).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seq2seq.data.batching import Examples
from seq2seq.data.corpus import ParallelText
from seq2seq.data.tokenizers import TextCodec
from seq2seq.files import atomic_write

log = logging.getLogger("seq2seq")


def fingerprint(text: ParallelText, src: TextCodec, tgt: TextCodec) -> str:
    """A hex digest of the sentences and of both sides' tokenizer and vocabulary."""
    h = hashlib.sha256()
    for codec in (src, tgt):
        h.update(codec.tokenizer.fingerprint())
        h.update("\x00".join(codec.vocab.pieces).encode())
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
