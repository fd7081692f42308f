"""The Transformer encoder-decoder (attention only), behind the same contract as the RNNs.

Pre-norm (default) or post-norm layers, sinusoidal or learned positions, embeddings
scaled by sqrt(d_model), and ``scaled_dot_product_attention``. Incremental decoding
keeps a key/value cache per decoder layer for self-attention and projects the encoder
memory into cross-attention keys/values once per sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.models.contract import Encoded, Seq2SeqModel
from seq2seq.models.copy import CopyHead
from seq2seq.models.dropout import (
    Dropout,
    attention_dropout,
    dropout_add,
    relu_dropout_linear,
)


class Embeddings(nn.Module):
    """Token embedding * sqrt(d) + position encoding, then dropout."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        pad_id: int,
        dropout: float,
        learned_positions: bool = False,
        max_len: int = 1024,
    ):
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        nn.init.normal_(self.tokens.weight, 0.0, dim**-0.5)
        with torch.no_grad():
            self.tokens.weight[pad_id].zero_()
        self.learned = nn.Embedding(max_len, dim) if learned_positions else None
        if self.learned is None:
            self.register_buffer("sinusoid", _sinusoids(max_len, dim), persistent=False)
        self.dropout = Dropout(dropout)

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``ids [batch, len]`` at positions ``start..start+len`` -> ``[batch, len, dim]``."""
        length = ids.size(1)
        if start + length > self.max_len:
            raise ValueError(
                f"sequence of {start + length} tokens exceeds the model's {self.max_len} positions"
            )
        if self.learned is not None:
            pos = self.learned.weight[start : start + length]
        else:
            pos = self.sinusoid[start : start + length]
        return self.dropout(self.tokens(ids) * math.sqrt(self.dim) + pos)


def _sinusoids(max_len: int, dim: int) -> torch.Tensor:
    pos = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table


class MultiHeadAttention(nn.Module):
    """Multi-head attention over ``scaled_dot_product_attention``.

    ``head_dim`` defaults to ``dim / heads``; a structurally pruned model keeps its
    heads' size with fewer heads (``heads * head_dim < dim``).
    """

    def __init__(self, dim: int, heads: int, dropout: float, head_dim: int | None = None):
        super().__init__()
        if head_dim is None and dim % heads:
            raise ValueError(f"the model size {dim} is not divisible by {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.head_dim = head_dim or dim // heads
        inner = heads * self.head_dim
        self.q = nn.Linear(dim, inner)
        self.kv = nn.Linear(dim, 2 * inner)
        self.out = nn.Linear(inner, dim)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        # [batch, len, dim] -> [batch, heads, len, dim / heads]
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def forward(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None = None,
        causal: bool = False,
    ) -> torch.Tensor:
        """Queries from ``x [batch, q_len, dim]`` over ``k, v [batch, heads, k_len, dh]``.

        ``mask`` is True where a key may be attended, broadcastable to
        ``[batch, heads, q_len, k_len]``.
        """
        q = self.split(self.q(x))
        if self.training:  # on the CPU with dropout, fused; else SDPA draws its own
            ctx = attention_dropout(q, k, v, mask, causal, self.dropout)
        elif q.size(2) == 1 and mask is None and q.device.type == "cpu":
            # One query over the cache (a decoding step's self-attention): two batched
            # products beat SDPA's flash kernel on the CPU (~5% of a beam-5 step).
            scores = (q @ k.transpose(-1, -2)) * q.size(-1) ** -0.5
            ctx = scores.softmax(-1, dtype=torch.float32).to(v.dtype) @ v
        else:  # fused kernels
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return self.out(ctx.transpose(1, 2).flatten(2))  # [batch, q_len, heads * dh] -> dim

    def with_weights(
        self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`forward` (inference), also returning head-averaged weights.

        Returns:
            ``(output [batch, q_len, dim], weights [batch, q_len, k_len])``.
        """
        q = self.split(self.q(x))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1, dtype=torch.float32)
        ctx = weights.to(v.dtype) @ v
        return self.out(ctx.transpose(1, 2).flatten(2)), weights.mean(1)


class FeedForward(nn.Module):
    """``outer(dropout(relu(inner(x))))``. The ReLU is a module so that an int8 copy can
    fuse it into ``inner`` (``inference.compress``); in training it is fused with the
    dropout and ``outer`` instead (:func:`relu_dropout_linear`)."""

    def __init__(self, dim: int, ff_dim: int, dropout: float):
        super().__init__()
        self.inner, self.act, self.outer, self.dropout = (
            nn.Linear(dim, ff_dim),
            nn.ReLU(),
            nn.Linear(ff_dim, dim),
            dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return relu_dropout_linear(self.inner(x), self.dropout, True, self.outer)
        return self.outer(self.act(self.inner(x)))


class Sublayer(nn.Module):
    """Residual connection around a sublayer, with pre- or post-layer-norm."""

    def __init__(self, dim: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm, self.dropout, self.pre_norm = nn.LayerNorm(dim), dropout, pre_norm

    def forward(self, x: torch.Tensor, fn) -> torch.Tensor:
        if self.pre_norm:
            return dropout_add(fn(self.norm(x)), x, self.dropout, self.training)
        return self.norm(dropout_add(fn(x), x, self.dropout, self.training))


class EncoderLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        ff_dim: int,
        dropout: float,
        pre_norm: bool,
        head_dim: int | None = None,
    ):
        super().__init__()
        self.attn, self.ff = (
            MultiHeadAttention(dim, heads, dropout, head_dim),
            FeedForward(dim, ff_dim, dropout),
        )
        self.sub = nn.ModuleList(Sublayer(dim, dropout, pre_norm) for _ in range(2))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.sub[0](x, lambda h: self.attn(h, *self.attn.keys_values(h), mask=mask))
        return self.sub[1](x, self.ff)


class DecoderLayer(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        ff_dim: int,
        dropout: float,
        pre_norm: bool,
        head_dim: int | None = None,
    ):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, heads, dropout, head_dim)
        self.cross_attn = MultiHeadAttention(dim, heads, dropout, head_dim)
        self.ff = FeedForward(dim, ff_dim, dropout)
        self.sub = nn.ModuleList(Sublayer(dim, dropout, pre_norm) for _ in range(3))

    def forward(
        self,
        x,
        memory_kv,
        mask,
        cache: list | None = None,
        weights: list | None = None,
        group: int = 1,
        rows: torch.Tensor | None = None,
    ):
        """Full sequence (``cache`` None, causal) or one new position appended to ``cache``.

        With a ``weights`` list, the cross-attention weights are appended to it. With
        ``group > 1`` (incremental decoding), each run of ``group`` rows of ``x`` shares
        one row of the memory: they attend to it as ``group`` queries of one sequence.
        ``rows`` picks the cache rows that continue, in order (a reorder not yet done).
        """

        def self_attend(h):
            k, v = self.self_attn.keys_values(h)
            if cache is None:
                return self.self_attn(h, k, v, causal=True)
            if cache:
                k, v = _appended(cache[0], k, rows), _appended(cache[1], v, rows)
            cache[:] = [k, v]  # [batch, heads, t, dh]
            return self.self_attn(h, k, v)

        def cross_attend(h):
            rows = h.shape[:2]
            if group > 1:  # [sources * group, 1, dim] -> [sources, group, dim]
                h = h.reshape(-1, group, h.size(-1))
            if weights is None:
                return self.cross_attn(h, *memory_kv, mask=mask).reshape(*rows, -1)
            out, w = self.cross_attn.with_weights(h, *memory_kv, mask)
            weights.append(w.reshape(*rows, -1))
            return out.reshape(*rows, -1)

        x = self.sub[0](x, self_attend)
        x = self.sub[1](x, cross_attend)
        return self.sub[2](x, self.ff)


@dataclass
class TransformerState:
    """Incremental decoding state.

    The memory (cross-attention keys/values and source mask) has one row per source
    sentence; the decoder rows come in runs of ``group`` rows per source (a beam), so
    reordering hypotheses within their beams never copies the memory.
    """

    memory_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: [sources, heads, src, dh] x2
    cache: list[
        list[torch.Tensor]
    ]  # per layer: [k, v] [rows, heads, t, dh] of the positions so far
    mask: torch.Tensor  # [sources, 1, 1, src_len], True at real source positions
    position: int = 0
    group: int = 1  # decoder rows per source row
    src: torch.Tensor | None = None  # source ids [sources, src_len], for the copy head
    rows: torch.Tensor | None = None  # the cache rows each decoder row continues (None:
    # row for row): reordering is deferred to the next step, which copies the cache once
    attention: bool = True  # whether step returns the last layer's cross-attention


def _appended(cache: torch.Tensor, new: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """``cache [n, heads, t, dh]`` at ``rows`` (all, in order, when None) with ``new
    [rows, heads, 1, dh]`` appended along the positions, copying the cache once (twice
    where autograd records: ``out=`` has no gradient)."""
    if rows is not None and torch.is_grad_enabled() and (cache.requires_grad or new.requires_grad):
        cache, rows = cache.index_select(0, rows), None
    if rows is None:
        return torch.cat([cache, new], dim=2)
    _, heads, t, dh = cache.shape
    out = cache.new_empty(rows.numel(), heads, t + 1, dh)
    torch.index_select(cache, 0, rows, out=out[:, :, :t])
    out[:, :, t:] = new
    return out


def _regroup(index: torch.Tensor, group: int) -> tuple[torch.Tensor, int]:
    """The memory rows and group size after selecting decoder rows ``index``.

    Returns ``(sources, new_group)``: the new decoder rows come in runs of
    ``new_group`` rows that share memory row ``sources[i]``.
    """
    source = torch.div(index, group, rounding_mode="floor") if group > 1 else index
    n = source.numel()
    runs = int(source[1:].ne(source[:-1]).sum()) + 1 if n else 0
    if runs and n % runs == 0 and n > runs:
        size = n // runs
        blocks = source.view(runs, size)
        if bool(blocks.eq(blocks[:, :1]).all()):
            return blocks[:, 0], size
    return source, 1


class TransformerSeq2Seq(Seq2SeqModel):
    """Transformer encoder-decoder implementing the model contract.

    Args:
        src_embed, tgt_embed: :class:`Embeddings` (may share their token table).
        encoder, decoder: lists of layers.
        out: projection to the target vocabulary (may share the target embedding).
        pre_norm: adds the final layer norms a pre-norm stack needs.
        copy: a copy head over the last layer's cross-attention (mean of its heads).
    """

    def __init__(
        self,
        src_embed: Embeddings,
        tgt_embed: Embeddings,
        encoder: list[EncoderLayer],
        decoder: list[DecoderLayer],
        out: nn.Linear,
        pre_norm: bool,
        src_vocab_size: int,
        tgt_vocab_size: int,
        pad_id: int = 0,
        copy: CopyHead | None = None,
    ):
        super().__init__(src_vocab_size, tgt_vocab_size, pad_id)
        self.copy = copy
        self.max_positions = min(src_embed.max_len, tgt_embed.max_len)
        dim = src_embed.dim
        self.src_embed, self.tgt_embed, self.out = src_embed, tgt_embed, out
        self.encoder, self.decoder = nn.ModuleList(encoder), nn.ModuleList(decoder)
        self.enc_norm = nn.LayerNorm(dim) if pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(dim) if pre_norm else nn.Identity()

    def encode(self, src: torch.Tensor) -> Encoded:
        mask = src.ne(self.pad_id)  # [batch, src_len]
        attn_mask = mask[:, None, None, :]  # [batch, 1, 1, src_len]
        x = self.src_embed(src)
        for layer in self.encoder:
            x = layer(x, attn_mask)
        ids = src if self.copy is not None else None
        return Encoded(states=self.enc_norm(x), mask=mask, ids=ids)

    def init_state(self, encoded: Encoded, attention: bool = True) -> TransformerState:
        memory_kv = [layer.cross_attn.keys_values(encoded.states) for layer in self.decoder]
        return TransformerState(
            memory_kv,
            [[] for _ in self.decoder],
            encoded.mask[:, None, None, :],
            src=encoded.ids,
            attention=attention or self.copy is not None,  # the copy head reads them
        )

    def step(self, prev_tokens: torch.Tensor, state: TransformerState):
        x = self.tgt_embed(prev_tokens.unsqueeze(1), start=state.position)  # [rows, 1, dim]
        inputs = x
        weights: list[torch.Tensor] = []
        cache = [list(c) for c in state.cache]  # a new state: the given one stays valid
        last = len(self.decoder) - 1 if state.attention else -1
        for i, (layer, kv, c) in enumerate(zip(self.decoder, state.memory_kv, cache, strict=True)):
            # The last layer's cross-attention is returned for inspection (attention plots).
            x = layer(x, kv, state.mask, c, weights if i == last else None, state.group, state.rows)
        x = self.dec_norm(x)
        logits = self.out(x).squeeze(1)
        attention = weights[0].squeeze(1) if weights else None  # [rows, src_len]
        new_state = replace(state, cache=cache, position=state.position + 1, rows=None)
        if self.copy is not None:
            src = state.src.repeat_interleave(state.group, 0) if state.group > 1 else state.src
            gate = torch.cat([x, inputs], dim=-1).squeeze(1)
            return self.copy(logits, attention, src, gate), new_state, attention
        # In place where autograd does not record (out= has no gradient): a [rows, vocab]
        # tensor fewer to write each step. bf16 weights give bf16 log-probs.
        out = logits if not (torch.is_grad_enabled() and logits.requires_grad) else None
        log_probs = torch.log_softmax(logits, dim=-1, out=out)
        return log_probs, new_state, attention

    def reorder(self, state: TransformerState, index: torch.Tensor) -> TransformerState:
        sources, group = _regroup(index, state.group)
        memory_kv, mask, src = state.memory_kv, state.mask, state.src
        if sources.numel() != mask.size(0) or not torch.equal(
            sources, torch.arange(mask.size(0), device=sources.device)
        ):
            memory_kv = [
                (k.index_select(0, sources), v.index_select(0, sources)) for k, v in memory_kv
            ]
            mask = mask.index_select(0, sources)
            src = None if src is None else src.index_select(0, sources)
        rows = None
        if state.position > 0:  # the cache is copied once, by the next step
            rows = index if state.rows is None else state.rows.index_select(0, index)
        return replace(state, memory_kv=memory_kv, mask=mask, group=group, src=src, rows=rows)

    def features(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decode_states(self.encode(src), tgt_in)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.out(features)

    @property
    def output_layer(self) -> nn.Linear | None:
        return self.out if self.copy is None else None

    def forward(
        self,
        src: torch.Tensor,
        tgt_in: torch.Tensor,
        keep: torch.Tensor | None = None,
        *,
        project: bool = True,
    ) -> torch.Tensor:
        """See :meth:`Seq2SeqModel.forward`; with a copy head, mixed log-probabilities."""
        if self.copy is None:
            return super().forward(src, tgt_in, keep, project=project)
        if not project:
            raise ValueError("a model with a copy head has no plain output layer")
        weights: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        states = self.decode_states(self.encode(src), tgt_in, weights, inputs)
        gate = torch.cat([states, inputs[0]], dim=-1)  # [batch, tgt_len, 2 * dim]
        return self.copy.teacher_forced(self.out, states, weights[0], src, gate, keep)

    def decode_states(
        self,
        encoded: Encoded,
        tgt_in: torch.Tensor,
        weights: list | None = None,
        inputs: list | None = None,
    ) -> torch.Tensor:
        """Teacher-forced final decoder states ``[batch, tgt_len, dim]``; with lists, the
        last layer's cross-attention ``[batch, tgt_len, src_len]`` and the embedded
        inputs are appended to them."""
        mask = encoded.mask[:, None, None, :]
        x = self.tgt_embed(tgt_in)
        if inputs is not None:
            inputs.append(x)
        last = len(self.decoder) - 1
        for i, layer in enumerate(self.decoder):
            kv = layer.cross_attn.keys_values(encoded.states)
            x = layer(x, kv, mask, weights=weights if i == last else None)
        return self.dec_norm(x)
