"""Attention over encoder states.

``alpha_t = softmax(score(h_i, s_t))`` and ``c_t = sum_i alpha_ti h_i``.

Scores at padding positions are set to -inf before the softmax, so padding never
receives attention weight. Bahdanau attention can also take a coverage vector (See et
al., 2017): the attention each source position has received so far, ``c_t = sum_{t'<t}
alpha_t'``, enters the score, so the decoder can see what it has already attended to.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Base: subclasses define ``keys`` (precomputed once per source) and ``score``."""

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """Per-source precomputation, done once in ``encode``; ``[batch, src_len, *]``."""
        return memory

    def score(
        self, query: torch.Tensor, keys: torch.Tensor, coverage: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scores ``[batch, q_len, src_len]`` for queries ``[batch, q_len, dim]``."""
        raise NotImplementedError

    def forward(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
        coverage: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend with one or several queries.

        Args:
            query: decoder states, ``[batch, q_len, dec_dim]``.
            keys: the output of :meth:`keys`.
            memory: encoder states, ``[batch, src_len, enc_dim]``.
            mask: True at real source positions, ``[batch, src_len]``.
            coverage: attention received so far ``[batch, src_len]`` (one query only), for
                an attention built with coverage.

        Returns:
            ``(context [batch, q_len, enc_dim], weights [batch, q_len, src_len])``.
        """
        scores = self.score(query, keys, coverage)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.to(memory.dtype), memory)
        return context, weights


class BahdanauAttention(Attention):
    """Additive attention: ``score = v^T tanh(W_q s + W_k h)``, ``+ w_c c`` with coverage.

    Args:
        query_dim, key_dim, attn_dim: sizes of the decoder state, the encoder states and
            the hidden layer of the score.
        coverage: take a coverage vector (See et al., 2017) into the score.
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int, coverage: bool = False):
        super().__init__()
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=True)
        self.coverage_proj = nn.Linear(1, attn_dim, bias=False) if coverage else None
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # [batch, src_len, attn_dim]

    def score(
        self, query: torch.Tensor, keys: torch.Tensor, coverage: torch.Tensor | None = None
    ) -> torch.Tensor:
        # [batch, q_len, 1, attn] + [batch, 1, src_len, attn] -> [batch, q_len, src_len]
        keys = keys.unsqueeze(1)
        if self.coverage_proj is not None:
            if coverage is None:
                raise ValueError("this attention was built with coverage: pass the coverage")
            # [batch, src_len, 1] -> [batch, 1, src_len, attn]
            keys = keys + self.coverage_proj(coverage.unsqueeze(-1).to(keys.dtype)).unsqueeze(1)
        hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + keys)
        return self.v(hidden).squeeze(-1)


class LuongAttention(Attention):
    """Multiplicative attention: ``dot`` (``s^T h``) or ``general`` (``s^T W h``)."""

    def __init__(self, query_dim: int, key_dim: int, score: str = "general"):
        super().__init__()
        if score not in ("dot", "general"):
            raise ValueError(f"Luong score must be 'dot' or 'general', got {score!r}")
        if score == "dot" and query_dim != key_dim:
            raise ValueError(f"dot attention needs equal sizes, got {query_dim} and {key_dim}")
        self.key_proj = nn.Linear(key_dim, query_dim, bias=False) if score == "general" else None

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        # W h is query-independent, so it is computed once per source.
        return memory if self.key_proj is None else self.key_proj(memory)

    def score(
        self, query: torch.Tensor, keys: torch.Tensor, coverage: torch.Tensor | None = None
    ) -> torch.Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # [batch, q_len, src_len]
