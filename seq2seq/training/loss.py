"""Token-level cross-entropy with padding masked and label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from seq2seq.models.contract import Seq2SeqModel


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


def batch_loss(
    model: Seq2SeqModel,
    src: torch.Tensor,
    tgt_in: torch.Tensor,
    tgt_out: torch.Tensor,
    pad_id: int,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Summed teacher-forced loss of a batch; padding positions skip the output layer.

    The output projection is the largest matrix product of a step; computing it only
    for real target tokens saves the padding share of it, with the same result.
    """
    features = model.features(src, tgt_in)  # [batch, tgt_len, dim]
    keep = tgt_out.ne(pad_id)
    logits = model.project(features[keep])  # [real tokens, vocab]
    return sequence_loss(logits, tgt_out[keep], pad_id, label_smoothing)
