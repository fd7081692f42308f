"""Token-level cross-entropy with padding masked and label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sequence_loss(
    logits: torch.Tensor, target: torch.Tensor, pad_id: int, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Summed cross-entropy over real target tokens.

    Args:
        logits: ``[batch, tgt_len, vocab]`` (any float dtype; computed in fp32).
        target: gold ids ``[batch, tgt_len]``, ``pad_id`` where there is no token.
        pad_id: positions holding it contribute nothing (nor their smoothing mass).
        label_smoothing: mass spread uniformly over the vocabulary.

    Returns:
        A scalar: the loss summed over tokens (divide by the token count to average).
    """
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        target.reshape(-1),
        ignore_index=pad_id,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
