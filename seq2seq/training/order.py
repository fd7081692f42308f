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
    """

    def __init__(self, examples: Examples, batch_tokens: int, pool_batches: int, seed: int):
        self.examples, self.batch_tokens, self.pool_batches = examples, batch_tokens, pool_batches
        self.seed = seed
        self._epochs: dict[int, list[list[int]]] = {}

    def epoch(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` (this one and the previous one are kept)."""
        if epoch not in self._epochs:
            self._epochs = {e: o for e, o in self._epochs.items() if e == epoch - 1}
            rng = random.Random(self.seed * 100003 + epoch)
            self._epochs[epoch] = token_batches(
                self.examples, self.batch_tokens, rng=rng, pool_batches=self.pool_batches
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
