"""The one place where a model config becomes a model."""

from __future__ import annotations

from torch import nn

from seq2seq.config import ModelConfig
from seq2seq.models.attention import Attention, BahdanauAttention, LuongAttention
from seq2seq.models.contract import Seq2SeqModel
from seq2seq.models.copy import CopyHead
from seq2seq.models.rnn import Bridge, RNNDecoder, RNNEncoder, RNNSeq2Seq
from seq2seq.models.transformer import DecoderLayer, Embeddings, EncoderLayer, TransformerSeq2Seq


def _attention(cfg: ModelConfig) -> Attention | None:
    if cfg.attention == "bahdanau":
        return BahdanauAttention(cfg.hidden_dim, cfg.hidden_dim, cfg.hidden_dim, cfg.coverage)
    if cfg.attention == "luong":
        return LuongAttention(cfg.hidden_dim, cfg.hidden_dim, cfg.attention_score)
    return None


def build_model(
    cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int = 0
) -> Seq2SeqModel:
    """Build the model a config describes (validated whole when it was made).

    Raises:
        ValueError: a copy head over a source vocabulary larger than the target's (it
            copies source ids as target ids: a joint vocabulary).
    """
    if cfg.copy and src_vocab_size > tgt_vocab_size:
        raise ValueError(
            f"a copy head needs every source id to be a target id, but the source vocabulary "
            f"has {src_vocab_size} entries and the target's {tgt_vocab_size}"
        )
    if cfg.arch == "transformer":
        return _transformer(cfg, src_vocab_size, tgt_vocab_size, pad_id)
    encoder = RNNEncoder(
        src_vocab_size,
        cfg.emb_dim,
        cfg.hidden_dim,
        cfg.enc_layers,
        cfg.cell,
        cfg.bidirectional,
        cfg.dropout,
        pad_id,
    )
    decoder = RNNDecoder(
        tgt_vocab_size,
        cfg.emb_dim,
        cfg.hidden_dim,
        cfg.dec_layers,
        cfg.cell,
        _attention(cfg),
        cfg.input_feeding,
        cfg.dropout,
        pad_id,
        cfg.output_dim,
    )
    if cfg.tie_embeddings:
        decoder.out.weight = decoder.embed.weight
    bridge = Bridge(cfg.hidden_dim, cfg.dec_layers, cfg.cell)
    copy = CopyHead(decoder.output_dim + cfg.emb_dim) if cfg.copy else None  # [h~; input]
    return RNNSeq2Seq(encoder, bridge, decoder, src_vocab_size, tgt_vocab_size, pad_id, copy)


def _transformer(cfg: ModelConfig, src_vocab: int, tgt_vocab: int, pad_id: int) -> Seq2SeqModel:
    dim, learned, pre = cfg.hidden_dim, cfg.positions == "learned", cfg.norm == "pre"

    def embeddings(vocab: int) -> Embeddings:
        return Embeddings(vocab, dim, pad_id, cfg.dropout, learned, cfg.max_positions)

    src_embed, tgt_embed = embeddings(src_vocab), embeddings(tgt_vocab)
    if cfg.share_embeddings:
        tgt_embed.tokens.weight = src_embed.tokens.weight
    layer = (dim, cfg.heads, cfg.ff_dim, cfg.dropout, pre, cfg.head_dim)
    encoder = [EncoderLayer(*layer) for _ in range(cfg.enc_layers)]
    decoder = [DecoderLayer(*layer) for _ in range(cfg.dec_layers)]
    out = nn.Linear(dim, tgt_vocab, bias=False)
    if cfg.tie_embeddings or cfg.share_embeddings:
        out.weight = tgt_embed.tokens.weight
    copy = CopyHead(2 * dim) if cfg.copy else None  # [decoder output; embedded input]
    return TransformerSeq2Seq(
        src_embed, tgt_embed, encoder, decoder, out, pre, src_vocab, tgt_vocab, pad_id, copy
    )
