"""Token ids -> length-bucketed, token-counted batches of padded tensors."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from seq2seq.data.records import SourceCut
from seq2seq.data.vocab import BOS, EOS, PAD

log = logging.getLogger("seq2seq")


@dataclass
class Examples:
    """Encoded sentence pairs (ids without BOS/EOS); ``tgt`` is empty for source-only data.

    ``group[i]`` is the task of pair ``i`` (``data.tasks``); empty with one task.
    """

    src: Sequence[list[int]]  # lists, or rows memory-mapped from a stream's cache
    tgt: Sequence[list[int]]
    group: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.src)

    def tgt_tokens(self, index: list[int]) -> int:
        """Target tokens (EOS included) of the batch of pairs at ``index``."""
        return sum(len(self.tgt[i]) + 1 for i in index) if self.tgt else 0


@dataclass
class Batch:
    """A padded batch.

    Attributes:
        src: source ids + EOS, ``[batch, src_len]``.
        tgt_in: BOS + target ids, ``[batch, tgt_len]`` (None for source-only batches).
        tgt_out: target ids + EOS, ``[batch, tgt_len]`` (None for source-only batches).
        index: each row's position in the :class:`Examples` it came from.
    """

    src: torch.Tensor
    tgt_in: torch.Tensor | None
    tgt_out: torch.Tensor | None
    index: list[int]

    @property
    def n_tgt_tokens(self) -> int:
        return int(self.tgt_out.ne(PAD).sum()) if self.tgt_out is not None else 0

    def to(self, device: torch.device) -> Batch:
        def move(t):
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(move(self.src), move(self.tgt_in), move(self.tgt_out), self.index)


def filter_long(
    examples: Examples, max_len: int | None, name: str, *, max_tgt_len: int | None = None
) -> Examples:
    """Drop pairs whose source exceeds ``max_len`` tokens or whose target exceeds
    ``max_tgt_len`` (``max_len`` when None); log how many.

    ``max_len`` None leaves sources unlimited (they were cut to ``data.max_src_len``).
    """
    tgt_limit = max_tgt_len if max_tgt_len is not None else max_len

    def fits(i: int) -> bool:
        src_ok = max_len is None or len(examples.src[i]) <= max_len
        return src_ok and (
            not examples.tgt or tgt_limit is None or len(examples.tgt[i]) <= tgt_limit
        )

    keep = [i for i in range(len(examples)) if fits(i)]
    group = [examples.group[i] for i in keep] if examples.group else []
    report_dropped(name, len(examples) - len(keep), len(examples), max_len, tgt_limit)
    tgt = [examples.tgt[i] for i in keep] if examples.tgt else []
    return Examples([examples.src[i] for i in keep], tgt, group)


def report_dropped(
    name: str, dropped: int, total: int, max_len: int | None, tgt_limit: int | None
) -> None:
    """Warn that ``dropped`` of ``total`` pairs were over the length limits, if any."""
    if not dropped:
        return
    if tgt_limit == max_len:
        limit = f"longer than {max_len} tokens (data.max_len)"
    else:
        limit = (
            f"over the length limits (source: {max_len or 'any'}, target: {tgt_limit} "
            "tokens; data.max_len, data.max_tgt_len)"
        )
    log.warning("%s: dropped %d of %d pairs %s", name, dropped, total, limit)


def cut_sources(examples: Examples, cut: SourceCut, name: str) -> Examples:
    """Cut sources with ``cut`` (``data.max_src_len``: long inputs keep their pair); log
    how many were cut."""
    rows = [cut(row) for row in examples.src]
    n_cut = sum(len(new) < len(old) for new, old in zip(rows, examples.src, strict=True))
    if not n_cut:
        return examples
    report_cut(name, n_cut, len(examples), cut.limit)
    return Examples(rows, examples.tgt, examples.group)


def report_cut(name: str, n_cut: int, total: int, limit: int | None) -> None:
    """Log that ``n_cut`` of ``total`` sources were cut to ``limit`` tokens."""
    log.info("%s: cut %d of %d sources to %d tokens (data.max_src_len)", name, n_cut, total, limit)


def _key(examples: Examples, i: int) -> tuple[int, int]:
    """Row ``i``'s :func:`length_key` (a source-only row has a target of length 0)."""
    tgt = len(examples.tgt[i]) if examples.tgt else 0
    return length_key(len(examples.src[i]), tgt)


def _size(examples: Examples, i: int) -> int:
    """Padded tokens one row occupies: the longer side, plus EOS/BOS."""
    return _key(examples, i)[0]


def length_key(src_len: int, tgt_len: int) -> tuple[int, int]:
    """Where a pair goes in a length-sorted pool: by its padded size (the longer side,
    plus EOS/BOS), then by ``tgt_len - src_len``.

    Among rows of one size, those whose source is the longer side come first, by rising
    target length, then those whose target is, by falling source length: neighbours are
    alike on both sides, so a batch pads little on its shorter side too (sorting by the
    size alone leaves that side's lengths in random order).
    """
    return max(src_len, tgt_len) + 1, tgt_len - src_len


def token_batches(
    examples: Examples,
    batch_tokens: int,
    *,
    rng: random.Random | None = None,
    pool_batches: int = 100,
    indices: list[int] | None = None,
) -> list[list[int]]:
    """Group example indices into batches of at most ``batch_tokens`` padded tokens.

    Examples are sorted by length (:func:`length_key`) inside pools of about
    ``pool_batches`` batches, so batches hold similar lengths (little padding) while the
    order stays random.

    Args:
        examples: the data.
        batch_tokens: budget of padded tokens (rows x longest row) per batch; a single
            longer example still forms a batch of its own.
        rng: shuffles examples and batches when given (training); None keeps a
            deterministic length-sorted order (inference).
        pool_batches: pool size, in batches.
        indices: the examples to batch (an index may repeat); None: all of them once.

    Returns:
        Lists of example indices.
    """
    order = list(range(len(examples))) if indices is None else list(indices)
    if rng is None:
        pools = [order]
    else:
        rng.shuffle(order)
        mean = max(1, sum(_size(examples, i) for i in order[:1000]) // max(1, len(order[:1000])))
        pool = max(1, pool_batches * batch_tokens // mean)
        pools = [order[k : k + pool] for k in range(0, len(order), pool)]

    batches = []
    for pool in pools:
        pool.sort(key=lambda i: _key(examples, i))
        batches.extend(cut_sorted(pool, lambda i: _size(examples, i), batch_tokens))
    if rng is not None:
        rng.shuffle(batches)
    return batches


def cut_sorted(
    sorted_pool: list[int], size_of: Callable[[int], int], batch_tokens: int
) -> list[list[int]]:
    """Cut indices sorted by size into batches of at most ``batch_tokens`` padded tokens
    (``size_of(i)``: the padded length of row ``i``)."""
    batches, current, longest = [], [], 0
    for i in sorted_pool:
        size = size_of(i)
        if current and max(longest, size) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches


def _pad(rows: list[list[int]], prefix: list[int], suffix: list[int]) -> torch.Tensor:
    width = max(len(r) for r in rows) + len(prefix) + len(suffix)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        ids = prefix + row + suffix
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def collate(examples: Examples, index: list[int]) -> Batch:
    """Pad the examples at ``index`` into a :class:`Batch`."""
    src = _pad([examples.src[i] for i in index], [], [EOS])
    if not examples.tgt:
        return Batch(src, None, None, index)
    tgt = [examples.tgt[i] for i in index]
    return Batch(src, _pad(tgt, [BOS], []), _pad(tgt, [], [EOS]), index)


def padding_fraction(examples: Examples, batches: list[list[int]]) -> float:
    """Share of padded (wasted) source+target positions over the given batches."""
    real = padded = 0
    for index in batches:
        for side in (examples.src, examples.tgt):
            if not side:
                continue
            lengths = [len(side[i]) + 1 for i in index]
            real += sum(lengths)
            padded += max(lengths) * len(lengths)
    return 1.0 - real / padded if padded else 0.0
