"""The order of training batches: rebuilt from (seed, epoch), so resuming needs only a position."""

from __future__ import annotations

import bisect
import logging
import random

import numpy as np

from seq2seq.data.batching import Examples, cut_sorted, length_key, token_batches
from seq2seq.data.cache import MappedRows

log = logging.getLogger("seq2seq")

Position = tuple[int, int]  # (epoch, batches of that epoch already consumed)


class BatchOrder:
    """Which example indices each batch of each epoch holds.

    Args:
        examples: the training data.
        batch_tokens, pool_batches: see :func:`token_batches`.
        seed: with the epoch number, decides the shuffling.
        weights: with several tasks (``examples.group``), each task's share of an epoch
            (``data.tasks[i].weight``, relative): an epoch has as many examples as the
            data, task ``i`` ``weight_i / sum(weights)`` of them, drawn without
            replacement while its examples last (oversampled tasks repeat whole).
    """

    def __init__(
        self,
        examples: Examples,
        batch_tokens: int,
        pool_batches: int,
        seed: int,
        weights: tuple[float, ...] = (),
    ):
        self.examples, self.batch_tokens, self.pool_batches = examples, batch_tokens, pool_batches
        self.seed, self.weights = seed, weights
        self._epochs: dict[int, list[list[int]]] = {}
        if weights and examples.group:
            self._members = [[] for _ in weights]
            for i, g in enumerate(examples.group):
                self._members[g].append(i)
            shares = [len(examples) * w / sum(weights) for w in weights]
            self._counts = [round(share) for share in shares]
            log.info(
                "tasks per epoch: %s",
                ", ".join(
                    f"{c} of {len(m)} examples"
                    for c, m in zip(self._counts, self._members, strict=True)
                ),
            )

    def _indices(self, rng: random.Random) -> list[int] | None:
        """The examples of one epoch: all once, or each task's weighted share."""
        if not (self.weights and self.examples.group):
            return None
        chosen = []
        for members, count in zip(self._members, self._counts, strict=True):
            if not members:
                continue
            whole, rest = divmod(count, len(members))
            chosen += members * whole + rng.sample(members, rest)
        return chosen

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` (this one and the previous one are kept)."""
        if epoch not in self._epochs:
            self._epochs = {e: o for e, o in self._epochs.items() if e == epoch - 1}
            rng = random.Random(self.seed * 100003 + epoch)
            self._epochs[epoch] = token_batches(
                self.examples,
                self.batch_tokens,
                rng=rng,
                pool_batches=self.pool_batches,
                indices=self._indices(rng),
            )
        return self._epochs[epoch]

    def take(self, position: Position, n: int) -> tuple[list[list[int]], Position]:
        """The next ``n`` batches from ``position`` (crossing epochs), and the position after."""
        epoch, pos = position
        if pos >= len(self.epoch(epoch)):
            # Resumed with settings that give fewer batches (e.g. larger train.batch_tokens).
            log.warning("the saved data position is past this epoch's end: next epoch")
            epoch, pos = epoch + 1, 0
        batches = []
        for _ in range(n):
            batches.append(self.epoch(epoch)[pos])
            pos += 1
            if pos >= len(self.epoch(epoch)):
                epoch, pos = epoch + 1, 0
        return batches, (epoch, pos)


class StreamOrder:
    """The batch order of a streamed corpus (rows memory-mapped from its cache), too
    large to shuffle whole: the same interface as :class:`BatchOrder`.

    The corpus is split into windows of consecutive examples, about ``pool_batches``
    batches each. An epoch visits the windows in a shuffled order; inside a window the
    examples are shuffled, sorted by length and cut into batches (one length-sorted
    pool, as :func:`token_batches` makes), whose order is shuffled too. Only one
    window's lengths are read at a time, and a batch reads contiguous parts of the
    cache, so memory does not grow with the corpus. Everything follows from ``seed``,
    the epoch and the window, so a position (epoch, batches consumed) resumes exactly
    (resuming mid-epoch batches the windows before the position again, to count them).

    Args:
        examples: the memory-mapped training data.
        batch_tokens, pool_batches, seed: as for :class:`BatchOrder`.
    """

    def __init__(self, examples: Examples, batch_tokens: int, pool_batches: int, seed: int):
        self.examples, self.batch_tokens, self.seed = examples, batch_tokens, seed
        n = len(examples)
        mean = float(self._sizes(0, min(n, 10000)).mean())
        self.window = max(1, int(pool_batches * batch_tokens / mean))
        self.n_windows = -(-n // self.window)
        self._epoch = -1
        self._windows: list[int] = []  # the current epoch's order of windows
        self._ends: list[int] = []  # batches of its first k + 1 windows, k = 0, 1, ...
        self._current: tuple[int, list[list[int]]] = (-1, [])  # the last window batched
        log.info(
            "streamed batches: %d windows of %d examples, shuffled per epoch",
            self.n_windows,
            self.window,
        )

    def _sizes(self, start: int, stop: int) -> np.ndarray:
        """Padded tokens of rows ``start:stop``: the longer side, plus EOS/BOS."""
        src, tgt = self.examples.src, self.examples.tgt
        assert isinstance(src, MappedRows) and isinstance(tgt, MappedRows)
        return np.maximum(src.lengths(start, stop), tgt.lengths(start, stop)) + 1

    def _enter(self, epoch: int) -> None:
        if epoch != self._epoch:
            self._epoch, self._ends, self._current = epoch, [], (-1, [])
            self._windows = list(range(self.n_windows))
            random.Random(self.seed * 100003 + epoch).shuffle(self._windows)

    def _window_batches(self, k: int) -> list[list[int]]:
        """The batches of the current epoch's ``k``-th window (the last one is kept)."""
        if self._current[0] == k:
            return self._current[1]
        window = self._windows[k]
        start = window * self.window
        stop = min(len(self.examples), start + self.window)
        src, tgt = self.examples.src, self.examples.tgt
        assert isinstance(src, MappedRows) and isinstance(tgt, MappedRows)
        src_lengths, tgt_lengths = src.lengths(start, stop), tgt.lengths(start, stop)
        keys = [  # [0]: the padded size
            length_key(s, t)
            for s, t in zip(src_lengths.tolist(), tgt_lengths.tolist(), strict=True)
        ]
        rng = random.Random((self.seed * 100003 + self._epoch) * 1000003 + window)
        pool = list(range(start, stop))
        rng.shuffle(pool)
        pool.sort(key=lambda i: keys[i - start])
        batches = cut_sorted(pool, lambda i: keys[i - start][0], self.batch_tokens)
        rng.shuffle(batches)
        self._current = (k, batches)
        return batches

    def _locate(self, epoch: int, pos: int) -> tuple[int, int] | None:
        """The window ``k`` of ``epoch`` that holds its batch ``pos``, and the batch's
        place in that window; None when the epoch has fewer batches."""
        self._enter(epoch)
        while (not self._ends or pos >= self._ends[-1]) and len(self._ends) < self.n_windows:
            count = len(self._window_batches(len(self._ends)))
            self._ends.append((self._ends[-1] if self._ends else 0) + count)
        if pos >= self._ends[-1]:
            return None
        k = bisect.bisect_right(self._ends, pos)
        return k, pos - (self._ends[k - 1] if k else 0)

    def take(self, position: Position, n: int) -> tuple[list[list[int]], Position]:
        """The next ``n`` batches from ``position`` (crossing epochs), and the position after."""
        epoch, pos = position
        if self._locate(epoch, pos) is None:
            log.warning("the saved data position is past this epoch's end: next epoch")
            epoch, pos = epoch + 1, 0
        batches = []
        for _ in range(n):
            k, inside = self._locate(epoch, pos)  # type: ignore[misc]
            batches.append(self._window_batches(k)[inside])
            pos += 1
            if self._locate(epoch, pos) is None:
                epoch, pos = epoch + 1, 0
        return batches, (epoch, pos)


def batch_order(
    examples: Examples,
    batch_tokens: int,
    pool_batches: int,
    seed: int,
    weights: tuple[float, ...] = (),
) -> BatchOrder | StreamOrder:
    """The batch order for ``examples``: a :class:`StreamOrder` for a streamed corpus,
    else a :class:`BatchOrder`."""
    if isinstance(examples.src, MappedRows):
        return StreamOrder(examples, batch_tokens, pool_batches, seed)
    return BatchOrder(examples, batch_tokens, pool_batches, seed, weights)
