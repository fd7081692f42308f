"""Ensembles and forced decoding (scoring), through the decoding contract.

An :class:`Ensemble` is itself a decoder: every search runs on it unchanged. At each
step it averages its members' log-probabilities (a product of experts) and
renormalises, so its scores stay log-probabilities; an ensemble of one model is that
model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.models.contract import Decoder, Encoded


class Ensemble(nn.Module):
    """Several models with one target vocabulary, decoded as one.

    Args:
        models: the members (each implementing the model contract).

    Raises:
        ValueError: no models, or members with different target vocabularies.
    """

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        for name in ("tgt_vocab_size", "pad_id"):
            values = {getattr(m, name) for m in models}
            if len(values) > 1:
                raise ValueError(f"ensemble members disagree on {name}: {sorted(values)}")
        self.members = nn.ModuleList(models)
        self.pad_id = models[0].pad_id
        self.tgt_vocab_size = models[0].tgt_vocab_size
        limits = [m.max_positions for m in models if m.max_positions is not None]
        self.max_positions = min(limits) if limits else None
        self.has_attention = any(m.has_attention for m in models)

    def encode(self, src: torch.Tensor) -> Encoded:
        parts = [m.encode(src) for m in self.members]
        return Encoded(states=parts[0].states, mask=parts[0].mask, final=parts)

    def init_state(self, encoded: Encoded, attention: bool = True) -> list:
        return [
            m.init_state(e, attention) for m, e in zip(self.members, encoded.final, strict=True)
        ]

    def step(self, prev_tokens: torch.Tensor, state: list):
        outputs = [m.step(prev_tokens, s) for m, s in zip(self.members, state, strict=True)]
        log_probs = _mean_log_probs([lp for lp, _, _ in outputs])
        weights = [w for _, _, w in outputs if w is not None]
        attention = torch.stack(weights).mean(0) if weights else None
        return log_probs, [s for _, s, _ in outputs], attention

    def reorder(self, state: list, index: torch.Tensor) -> list:
        return [m.reorder(s, index) for m, s in zip(self.members, state, strict=True)]

    def forward(
        self, src: torch.Tensor, tgt_in: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher-forced ensemble log-probabilities ``[batch, tgt_len, vocab]`` (or
        ``[kept, vocab]`` at the ``keep`` positions, as for one model)."""
        return _mean_log_probs([m(src, tgt_in, keep) for m in self.members])


def _mean_log_probs(outputs: list[torch.Tensor]) -> torch.Tensor:
    if len(outputs) == 1:
        return F.log_softmax(outputs[0].float(), dim=-1)
    mean = torch.stack([F.log_softmax(o.float(), dim=-1) for o in outputs]).mean(0)
    return F.log_softmax(mean, dim=-1)


@torch.no_grad()
def score(
    model: Decoder, src: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor
) -> list[float]:
    """Forced decoding: each pair's log-likelihood, summed over ``tgt_out``.

    Args:
        model: a model or an :class:`Ensemble`.
        src: padded source ids ``[batch, src_len]``.
        tgt_in, tgt_out: padded decoder inputs (BOS + target) and outputs (target + EOS),
            ``[batch, tgt_len]``, padded with the model's ``pad_id``.

    Returns:
        One summed log-probability per row.
    """
    log_probs = F.log_softmax(model(src, tgt_in).float(), dim=-1)
    picked = log_probs.gather(2, tgt_out.unsqueeze(2)).squeeze(2)
    return picked.masked_fill(tgt_out.eq(model.pad_id), 0.0).sum(1).tolist()
