"""The model contract: the only surface that decoding code may use.

Every model family (the recurrent encoder-decoder and the Transformer) implements
it, so decoding (greedy search, sampling, beam search, ensembles) is written once
and never asks which family it holds:

* ``encode(src)`` runs the encoder once and returns an :class:`Encoded`;
* ``init_state(encoded, attention)`` builds the decoder state for the first step
  (``attention=False``: the search will not use the weights ``step`` returns);
* ``step(prev_tokens, state)`` advances one token for the whole batch;
* ``reorder(state, index)`` selects or duplicates rows of a state (beam search,
  dropping finished sentences);
* ``forward(src, tgt_in, keep)`` is the teacher-forced pass; training passes ``keep``
  (the real target positions) so that padding skips the output layer, and calls it
  through ``model(...)`` so that wrappers (DistributedDataParallel) see it.

:class:`Decoder` is the part the searches use, which models and ensembles share.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass
class Encoded:
    """What the encoder hands to the decoder.

    Attributes:
        states: every source position's state, ``[batch, src_len, dim]``.
        mask: True at real (non-padding) source positions, ``[batch, src_len]``.
        final: the encoder's final state in whatever form the decoder's bridge expects.
        ids: the source ids ``[batch, src_len]`` when the model has a copy head.
    """

    states: torch.Tensor
    mask: torch.Tensor
    final: Any = None
    ids: torch.Tensor | None = None  # the source ids, for a model that copies from them


class Decoder(Protocol):
    """What a search needs of a model: every :class:`Seq2SeqModel` and every
    :class:`~seq2seq.search.Ensemble` satisfies it."""

    pad_id: int
    max_positions: int | None
    has_attention: bool

    def encode(self, src: torch.Tensor) -> Encoded: ...

    def init_state(self, encoded: Encoded, attention: bool = True) -> Any: ...

    def step(
        self, prev_tokens: torch.Tensor, state: Any
    ) -> tuple[torch.Tensor, Any, torch.Tensor | None]: ...

    def reorder(self, state: Any, index: torch.Tensor) -> Any: ...

    def __call__(
        self, src: torch.Tensor, tgt_in: torch.Tensor, keep: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class Seq2SeqModel(nn.Module, abc.ABC):
    """Base class of every encoder-decoder model.

    Args:
        src_vocab_size: number of source token ids.
        tgt_vocab_size: number of target token ids.
        pad_id: the padding id shared by both vocabularies.

    Attributes:
        max_positions: the longest sequence the model can represent (None: unbounded).
        has_attention: whether ``step`` returns attention weights.
    """

    max_positions: int | None = None
    has_attention: bool = True

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0):
        super().__init__()
        self.src_vocab_size = src_vocab_size
        self.tgt_vocab_size = tgt_vocab_size
        self.pad_id = pad_id

    @abc.abstractmethod
    def encode(self, src: torch.Tensor) -> Encoded:
        """Encode padded source ids ``[batch, src_len]``."""

    @abc.abstractmethod
    def init_state(self, encoded: Encoded, attention: bool = True) -> Any:
        """The decoder state before the first target token.

        ``attention=False`` says the caller will not use the attention weights
        :meth:`step` returns: a model that computes them only to return them (the
        Transformer's) may then return None and skip them.
        """

    @abc.abstractmethod
    def step(
        self, prev_tokens: torch.Tensor, state: Any
    ) -> tuple[torch.Tensor, Any, torch.Tensor | None]:
        """Advance the decoder by one token.

        Args:
            prev_tokens: the previous target token of each row, ``[batch]``.
            state: the state returned by :meth:`init_state` or the previous step.

        Returns:
            ``(log_probs [batch, tgt_vocab], new_state, attention [batch, src_len] or None)``;
            the log-probabilities have the model's floating dtype (bf16 for a bf16 copy).
        """

    @abc.abstractmethod
    def reorder(self, state: Any, index: torch.Tensor) -> Any:
        """Select rows ``index`` (``[new_batch]``, int64) of every tensor in ``state``."""

    @abc.abstractmethod
    def features(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder outputs ``[batch, tgt_len, dim]`` before the output layer."""

    @abc.abstractmethod
    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Output-layer logits ``[..., tgt_vocab]`` for features ``[..., dim]``."""

    @property
    def output_layer(self) -> nn.Linear | None:
        """The output layer, where the logits are exactly it applied to what
        ``forward(..., project=False)`` returns (a loss may then be fused with it);
        None where the output is more than a projection (a copy head's mixture)."""
        return None

    def forward(
        self,
        src: torch.Tensor,
        tgt_in: torch.Tensor,
        keep: torch.Tensor | None = None,
        *,
        project: bool = True,
    ) -> torch.Tensor:
        """Teacher-forced logits for ``tgt_in [batch, tgt_len]``.

        Args:
            src: padded source ids ``[batch, src_len]``.
            tgt_in: decoder inputs (BOS + target) ``[batch, tgt_len]``.
            keep: True at the positions whose logits are wanted, ``[batch, tgt_len]``;
                the output layer runs on those only (None: every position).
            project: False returns the inputs of :attr:`output_layer` instead of the
                logits (a model without one raises ValueError).

        Returns:
            ``[batch, tgt_len, tgt_vocab]``, or ``[keep.sum(), tgt_vocab]`` with ``keep``.
            A model whose output layer is more than a projection (a copy head) overrides
            this and may return log-probabilities, which the loss accepts alike.
        """
        features = self.features(src, tgt_in)  # [batch, tgt_len, dim]
        if keep is not None:
            features = features[keep]  # [kept, dim]
        return self.project(features) if project else features
