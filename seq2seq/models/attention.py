"""Attention over encoder states.

``alpha_t = softmax(score(h_i, s_t))`` and ``c_t = sum_i alpha_ti h_i``.

Scores at padding positions are set to -inf before the softmax, so padding never
receives attention weight.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Base: subclasses define ``keys`` (precomputed once per source) and ``score``."""

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        """Per-source precomputation, done once in ``encode``; ``[batch, src_len, *]``."""
        return memory

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Scores ``[batch, q_len, src_len]`` for queries ``[batch, q_len, dim]``."""
        raise NotImplementedError

    def forward(
        self, query: torch.Tensor, keys: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend with one or several queries.

        Args:
            query: decoder states, ``[batch, q_len, dec_dim]``.
            keys: the output of :meth:`keys`.
            memory: encoder states, ``[batch, src_len, enc_dim]``.
            mask: True at real source positions, ``[batch, src_len]``.

        Returns:
            ``(context [batch, q_len, enc_dim], weights [batch, q_len, src_len])``.
        """
        scores = self.score(query, keys)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        context = torch.bmm(weights.to(memory.dtype), memory)
        return context, weights


class BahdanauAttention(Attention):
    """Additive attention: ``score = v^T tanh(W_q s + W_k h)``."""

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int):
        super().__init__()
        self.key_proj = nn.Linear(key_dim, attn_dim, bias=False)
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=True)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key_proj(memory)  # [batch, src_len, attn_dim]

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        # [batch, q_len, 1, attn] + [batch, 1, src_len, attn] -> [batch, q_len, src_len]
        hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))
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

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return torch.bmm(query, keys.transpose(1, 2))  # [batch, q_len, src_len]
