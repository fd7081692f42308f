"""The order of training batches: rebuilt from (seed, epoch), so resuming needs only a position."""

from __future__ import annotations

import logging
import random

from seq2seq.data.batching import Examples, token_batches

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
