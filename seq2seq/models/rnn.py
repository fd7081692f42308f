"""The recurrent encoder-decoder of the seed: embedding + GRU/LSTM, with optional attention.

``attention=None`` is the seed's plain model: the encoder's final state starts the
decoder (``h_t = RNN(h_{t-1}, x_t)``, ``y = g(f(x))``). With Bahdanau attention the
previous decoder state queries the source before the recurrent step and the context
is fed into the RNN; with Luong attention the new decoder state queries it after the
step, and with input feeding the attentional state is fed to the next step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.models.attention import Attention, BahdanauAttention, LuongAttention
from seq2seq.models.contract import Encoded, Seq2SeqModel
from seq2seq.models.copy import CopyHead
from seq2seq.models.dropout import Dropout

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # GRU h, or LSTM (h, c)
_CELLS = {"gru": nn.GRU, "lstm": nn.LSTM}


def _map_hidden(hidden: Hidden, fn) -> Hidden:
    return tuple(fn(h) for h in hidden) if isinstance(hidden, tuple) else fn(hidden)


def _top(hidden: Hidden) -> torch.Tensor:
    """The top layer's hidden state ``[batch, hidden]``."""
    return (hidden[0] if isinstance(hidden, tuple) else hidden)[-1]


class RNNEncoder(nn.Module):
    """Embedding + (bi)directional multi-layer GRU/LSTM over packed sequences.

    With ``bidirectional`` each direction has ``hidden_dim // 2`` units, so every
    source state has ``hidden_dim`` features either way.
    """

    def __init__(
        self,
        vocab_size: int,
        emb_dim: int,
        hidden_dim: int,
        layers: int,
        cell: str,
        bidirectional: bool,
        dropout: float,
        pad_id: int,
    ):
        super().__init__()
        self.dirs = 2 if bidirectional else 1
        if hidden_dim % self.dirs:
            raise ValueError(f"a bidirectional encoder needs an even hidden size, got {hidden_dim}")
        self.layers = layers
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        self.dropout = Dropout(dropout)
        self.rnn = _CELLS[cell](
            emb_dim,
            hidden_dim // self.dirs,
            layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if layers > 1 else 0.0,
        )

    def forward(self, src: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Hidden]:
        """Returns ``(states [batch, src_len, hidden], final [layers, batch, hidden])``."""
        lengths = mask.sum(1).cpu()
        x = self.dropout(self.embed(src))  # [batch, src_len, emb]
        # Packing makes states (and the final state) independent of the padding.
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        return states, _map_hidden(final, self._join_directions)

    def _join_directions(self, h: torch.Tensor) -> torch.Tensor:
        # [layers * dirs, batch, h] -> [layers, batch, dirs * h]
        batch = h.size(1)
        h = h.view(self.layers, self.dirs, batch, -1).transpose(1, 2)
        return h.reshape(self.layers, batch, -1)


class Bridge(nn.Module):
    """Maps the encoder's top final state to the decoder's initial state (every layer)."""

    def __init__(self, hidden_dim: int, dec_layers: int, cell: str):
        super().__init__()
        self.dec_layers = dec_layers
        n = 2 if cell == "lstm" else 1
        self.proj = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim * dec_layers) for _ in range(n))

    def forward(self, final: Hidden) -> Hidden:
        parts = final if isinstance(final, tuple) else (final,)
        out = []
        for proj, h in zip(self.proj, parts, strict=True):
            batch = h.size(1)
            init = torch.tanh(proj(h[-1]))  # [batch, dec_layers * hidden]
            out.append(init.view(batch, self.dec_layers, -1).transpose(0, 1).contiguous())
        return tuple(out) if len(out) > 1 else out[0]


@dataclass
class RNNState:
    """Decoder state; every tensor has the batch first (``hidden`` has it second)."""

    hidden: Hidden  # [layers, batch, hidden]
    feed: torch.Tensor | None  # Luong input feeding: previous h~ [batch, 1, output_dim]
    memory: torch.Tensor  # [batch, src_len, hidden]
    keys: torch.Tensor | None  # attention's precomputed keys
    mask: torch.Tensor  # [batch, src_len]
    src: torch.Tensor | None = None  # source ids [batch, src_len], for the copy head
    coverage: torch.Tensor | None = None  # attention received so far [batch, src_len]


class RNNDecoder(nn.Module):
    """Embedding + GRU/LSTM + output projection, with ``none``/``bahdanau``/``luong`` attention."""

    def __init__(
        self,
        vocab_size: int,
        emb_dim: int,
        hidden_dim: int,
        layers: int,
        cell: str,
        attention: Attention | None,
        input_feeding: bool,
        dropout: float,
        pad_id: int,
        output_dim: int | None = None,
    ):
        super().__init__()
        self.attention = attention
        self.bahdanau = isinstance(attention, BahdanauAttention)
        self.coverage = self.bahdanau and attention.coverage_proj is not None
        self.input_feeding = isinstance(attention, LuongAttention) and input_feeding
        # h~, the attentional state the output layer reads (smaller after structured pruning)
        self.output_dim = output_dim or hidden_dim
        self.feed_dim = self.output_dim if self.input_feeding else 0  # h~ fed to the next step
        feed_dim = hidden_dim if self.bahdanau else self.feed_dim  # Bahdanau: the context
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=pad_id)
        self.dropout = Dropout(dropout)
        self.rnn = _CELLS[cell](
            emb_dim + feed_dim,
            hidden_dim,
            layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.combine = nn.Linear(2 * hidden_dim, self.output_dim) if attention is not None else None
        self.out = nn.Linear(self.output_dim, vocab_size)

    @property
    def recurrent_feed(self) -> bool:
        """Whether each step needs the previous step's output (no whole-sequence pass)."""
        return self.bahdanau or self.input_feeding

    def _attentional(self, out: torch.Tensor, state: RNNState, context=None, attn=None):
        """``tanh(W [s; c])`` ``[batch, len, output_dim]`` for RNN outputs ``[batch, len,
        hidden]``; attends if no context."""
        if self.attention is None:
            return out, None
        if context is None:
            context, attn = self.attention(out, state.keys, state.memory, state.mask)
        return torch.tanh(self.combine(torch.cat([out, context], dim=-1))), attn

    def step(self, emb: torch.Tensor, state: RNNState):
        """One step: embedded ``[batch, 1, emb]`` -> ``(h~ [batch, 1, output_dim], state,
        attn)``."""
        context = attn = None
        if self.bahdanau:
            query = _top(state.hidden).unsqueeze(1)  # s_{t-1}: [batch, 1, hidden]
            context, attn = self.attention(
                query, state.keys, state.memory, state.mask, state.coverage
            )
            emb = torch.cat([emb, context], dim=-1)
        elif self.input_feeding:
            emb = torch.cat([emb, state.feed], dim=-1)
        out, hidden = self.rnn(emb, state.hidden)  # out: [batch, 1, hidden]
        h_tilde, attn = self._attentional(out, state, context, attn)
        feed = h_tilde if self.input_feeding else None
        coverage = state.coverage + attn.squeeze(1) if self.coverage else None
        return h_tilde, replace(state, hidden=hidden, feed=feed, coverage=coverage), attn

    def forward(
        self, tgt_in: torch.Tensor, state: RNNState
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher-forced attentional states ``[batch, tgt_len, hidden]`` and attention
        weights ``[batch, tgt_len, src_len]`` (None without attention)."""
        emb = self.dropout(self.embed(tgt_in))  # [batch, tgt_len, emb]
        if not self.recurrent_feed:
            # No step depends on the previous output: run the RNN over the whole sequence.
            out, _ = self.rnn(emb, state.hidden)
            return self._attentional(out, state)
        outs, weights = [], []
        for t in range(tgt_in.size(1)):
            h_tilde, state, attn = self.step(emb[:, t : t + 1], state)
            outs.append(h_tilde)
            weights.append(attn)
        return torch.cat(outs, dim=1), torch.cat(weights, dim=1)

    def logits(self, h_tilde: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(h_tilde))


class RNNSeq2Seq(Seq2SeqModel):
    """Encoder + bridge + decoder, implementing the model contract.

    Args:
        encoder: the source encoder.
        bridge: maps the encoder's final state to the decoder's initial state.
        decoder: the target decoder.
        src_vocab_size, tgt_vocab_size, pad_id: see :class:`Seq2SeqModel`.
        copy: a copy head (pointer-generator; needs attention and one shared vocabulary).

    A decoder whose attention has coverage keeps the attention each source position has
    received in its state, and ``forward(..., coverage_penalty=True)`` also returns See et
    al.'s coverage loss ``sum_t sum_i min(a_ti, c_ti)``.
    """

    def __init__(
        self,
        encoder: RNNEncoder,
        bridge: Bridge,
        decoder: RNNDecoder,
        src_vocab_size: int,
        tgt_vocab_size: int,
        pad_id: int = 0,
        copy: CopyHead | None = None,
    ):
        super().__init__(src_vocab_size, tgt_vocab_size, pad_id)
        self.has_attention = decoder.attention is not None
        if copy is not None and not self.has_attention:
            raise ValueError("a copy head copies through attention: the decoder has none")
        self.encoder = encoder
        self.bridge = bridge
        self.decoder = decoder
        self.copy = copy

    def encode(self, src: torch.Tensor) -> Encoded:
        mask = src.ne(self.pad_id)  # [batch, src_len]
        states, final = self.encoder(src, mask)
        ids = src if self.copy is not None else None
        return Encoded(states=states, mask=mask, final=final, ids=ids)

    def init_state(self, encoded: Encoded, attention: bool = True) -> RNNState:
        # ``attention`` is ignored: the weights are part of the step (the context
        # vector), so they are always returned
        scorer = self.decoder.attention
        keys = scorer.keys(encoded.states) if scorer is not None else None
        hidden = self.bridge(encoded.final)
        feed = coverage = None
        if self.decoder.input_feeding:
            feed = encoded.states.new_zeros(encoded.states.size(0), 1, self.decoder.feed_dim)
        if self.decoder.coverage:
            coverage = encoded.states.new_zeros(encoded.mask.shape, dtype=torch.float32)
        return RNNState(
            hidden=hidden,
            feed=feed,
            memory=encoded.states,
            keys=keys,
            mask=encoded.mask,
            src=encoded.ids,
            coverage=coverage,
        )

    def step(self, prev_tokens: torch.Tensor, state: RNNState):
        emb = self.decoder.embed(prev_tokens.unsqueeze(1))  # [batch, 1, emb]
        h_tilde, state, attn = self.decoder.step(emb, state)
        logits = self.decoder.logits(h_tilde).squeeze(1)
        attn = None if attn is None else attn.squeeze(1)  # [batch, src_len]
        if self.copy is not None:
            gate = torch.cat([h_tilde, emb], dim=-1).squeeze(1)
            return self.copy(logits, attn, state.src, gate), state, attn
        log_probs = torch.log_softmax(logits, dim=-1)  # bf16 weights give bf16 log-probs
        return log_probs, state, attn

    def reorder(self, state: RNNState, index: torch.Tensor) -> RNNState:
        def pick(t, dim=0):
            return None if t is None else t.index_select(dim, index)

        return RNNState(
            hidden=_map_hidden(state.hidden, lambda h: pick(h, 1)),
            feed=pick(state.feed),
            memory=pick(state.memory),
            keys=pick(state.keys),
            mask=pick(state.mask),
            src=pick(state.src),
            coverage=pick(state.coverage),
        )

    def features(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decoder(tgt_in, self.init_state(self.encode(src)))[0]

    def forward(
        self,
        src: torch.Tensor,
        tgt_in: torch.Tensor,
        keep: torch.Tensor | None = None,
        *,
        project: bool = True,
        coverage_penalty: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """See :meth:`Seq2SeqModel.forward`; with a copy head, mixed log-probabilities.

        With ``coverage_penalty`` (a decoder with coverage only), returns ``(output,
        penalty)``: the coverage loss summed over the ``keep`` positions (every position
        without ``keep``).
        """
        if coverage_penalty and not self.decoder.coverage:
            raise ValueError("coverage_penalty needs a model built with coverage")
        if not project and self.copy is not None:
            raise ValueError("a model with a copy head has no plain output layer")
        h_tilde, attn = self.decoder(tgt_in, self.init_state(self.encode(src)))
        if self.copy is not None:
            gate = torch.cat([h_tilde, self.decoder.embed(tgt_in)], dim=-1)
            out = self.copy.teacher_forced(self.decoder.logits, h_tilde, attn, src, gate, keep)
        else:
            kept = h_tilde if keep is None else h_tilde[keep]
            out = self.decoder.logits(kept) if project else self.decoder.dropout(kept)
        if not coverage_penalty:
            return out
        seen = attn.cumsum(1) - attn  # the coverage before each step
        penalty = torch.minimum(attn, seen).sum(-1)  # [batch, tgt_len]
        return out, (penalty if keep is None else penalty[keep]).sum()

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder.logits(features)

    @property
    def output_layer(self) -> nn.Linear | None:
        return self.decoder.out if self.copy is None else None
