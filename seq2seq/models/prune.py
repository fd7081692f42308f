"""Pruning: magnitude masks for any model, and structured shrinking of both families.

Unstructured (magnitude) pruning zeroes the smallest weights; the model keeps its
shape, and the checkpoint stores the zeros as a bit mask (``checkpoint.py``), so the
file shrinks. Structured pruning removes whole units: attention heads and
feed-forward neurons of a Transformer (and whole decoder layers), units of a recurrent
decoder's attentional layer h~ (the output layer's input). The result is a smaller dense model that
:func:`build_model` builds from the returned config, so everything that loads a model
(decoding, CTranslate2 export) takes it as is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch

from seq2seq.config import ModelConfig
from seq2seq.models.build import build_model
from seq2seq.models.contract import Seq2SeqModel
from seq2seq.models.rnn import RNNSeq2Seq
from seq2seq.models.transformer import FeedForward, MultiHeadAttention, TransformerSeq2Seq

Scope = Literal["global", "layer"]


def prunable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The weight matrices magnitude pruning acts on: every parameter of two or more
    dimensions (linear layers, embeddings), each tied one once under its first name.
    Biases and layer norms are left whole."""
    seen: set[int] = set()
    out = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if param.dim() >= 2 and id(param) not in seen:
            seen.add(id(param))
            out[name] = param
    return out


@torch.no_grad()
def magnitude_prune(model: torch.nn.Module, sparsity: float, scope: Scope = "global") -> float:
    """Zero the ``sparsity`` share of the smallest-magnitude prunable weights, in place.

    ``global`` ranks all prunable weights together (class-blind, See et al. 2016);
    ``layer`` prunes each weight matrix by the same share.

    Returns:
        The share of prunable weights that are zero afterwards.

    Raises:
        ValueError: a sparsity outside (0, 1).
    """
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be between 0 and 1 (exclusive), got {sparsity}")
    params = list(prunable(model).values())
    if scope == "global":
        magnitudes = torch.cat([p.detach().abs().flatten().float() for p in params])
        cut = _threshold(magnitudes, sparsity)
        for p in params:
            p.mul_(p.abs().float().gt(cut).to(p.dtype))
    else:
        for p in params:
            cut = _threshold(p.detach().abs().flatten().float(), sparsity)
            p.mul_(p.abs().float().gt(cut).to(p.dtype))
    zeros = sum(int(p.eq(0).sum()) for p in params)
    return zeros / sum(p.numel() for p in params)


def _threshold(magnitudes: torch.Tensor, sparsity: float) -> float:
    """The magnitude at or below which ``sparsity`` of the entries lie."""
    k = max(1, int(round(sparsity * magnitudes.numel())))
    return float(magnitudes.kthvalue(k).values)


def zero_masks(model: torch.nn.Module) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Each prunable weight with a mask of its non-zero entries: what fine-tuning a
    magnitude-pruned model keeps (the zeros stay zero)."""
    return [(p, p.detach().ne(0)) for p in prunable(model).values() if bool(p.eq(0).any())]


# ---------------------------------------------------------------------------- structured


def shrink_transformer(
    model: TransformerSeq2Seq, cfg: ModelConfig, heads: int, ff_dim: int
) -> tuple[Seq2SeqModel, ModelConfig]:
    """A smaller Transformer keeping the ``heads`` most important attention heads of
    every attention layer and the ``ff_dim`` most important feed-forward neurons of
    every layer; the rest of the weights are copied as they are.

    Importance is magnitude-based: a head scores the norm of its value projection
    times the norm of its slice of the output projection (its contribution to the
    residual stream), a neuron the norm of its input row times its output column.

    Returns:
        ``(model, config)``: the config builds the smaller model (``heads``,
        ``head_dim`` kept from the original, ``ff_dim``).

    Raises:
        ValueError: not a Transformer, or more heads or neurons than it has.
    """
    if not isinstance(model, TransformerSeq2Seq):
        raise ValueError("structured pruning removes attention heads and neurons: a Transformer")
    first = model.encoder[0].attn
    if not 1 <= heads <= first.heads:
        raise ValueError(f"cannot keep {heads} heads: the model has {first.heads} per layer")
    inner = model.encoder[0].ff.inner.out_features
    if not 1 <= ff_dim <= inner:
        raise ValueError(f"cannot keep {ff_dim} feed-forward neurons: the model has {inner}")
    small_cfg = dataclasses.replace(cfg, heads=heads, head_dim=first.head_dim, ff_dim=ff_dim)
    small = build_model(small_cfg, model.src_vocab_size, model.tgt_vocab_size, model.pad_id)
    weights = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, MultiHeadAttention):
            _slice_attention(weights, name, module, _top(_head_scores(module), heads))
        elif isinstance(module, FeedForward):
            _slice_ffn(weights, name, _top(_neuron_scores(module), ff_dim))
    small.load_state_dict(weights)
    return small, small_cfg


def drop_decoder_layers(
    model: TransformerSeq2Seq, cfg: ModelConfig, keep: Sequence[int]
) -> tuple[TransformerSeq2Seq, ModelConfig]:
    """A Transformer whose decoder keeps only its layers ``keep`` (in the model's order,
    whatever the order given); the rest of the weights are copied as they are.

    Raises:
        ValueError: not a Transformer, or ``keep`` empty, repeated or out of range.
    """
    if not isinstance(model, TransformerSeq2Seq):
        raise ValueError("dropping decoder layers needs a Transformer")
    layers = len(model.decoder)
    if not keep or len(set(keep)) != len(keep) or not all(0 <= i < layers for i in keep):
        raise ValueError(f"cannot keep decoder layers {list(keep)} of {layers}")
    small_cfg = dataclasses.replace(cfg, dec_layers=len(keep))
    small = build_model(small_cfg, model.src_vocab_size, model.tgt_vocab_size, model.pad_id)
    renumbered = {f"decoder.{old}.": f"decoder.{new}." for new, old in enumerate(sorted(keep))}
    weights = {}
    for key, value in model.state_dict().items():
        if not key.startswith("decoder."):
            weights[key] = value
            continue
        prefix = ".".join(key.split(".")[:2]) + "."
        if prefix in renumbered:
            weights[renumbered[prefix] + key[len(prefix) :]] = value
    small.load_state_dict(weights)
    return small, small_cfg


def shrink_rnn(
    model: RNNSeq2Seq, cfg: ModelConfig, output_dim: int
) -> tuple[Seq2SeqModel, ModelConfig]:
    """A recurrent model keeping the ``output_dim`` most important units of its
    attentional layer h~ = tanh(W [s; c]): rows of W, columns of the output layer (and
    of the input-feeding and copy-gate weights that read h~).

    A unit scores the norm of its row of W times the norm of its output-layer column.

    Raises:
        ValueError: no attention (no h~), an output layer tied to the embeddings, or
            more units than the model has.
    """
    decoder = model.decoder
    if decoder.combine is None:
        raise ValueError("the decoder has no attention, so no attentional layer to prune")
    if decoder.out.weight is decoder.embed.weight:
        raise ValueError("the output layer is tied to the target embeddings (tie_embeddings)")
    if not 1 <= output_dim <= decoder.output_dim:
        raise ValueError(
            f"cannot keep {output_dim} output units: the model has {decoder.output_dim}"
        )
    small_cfg = dataclasses.replace(cfg, output_dim=output_dim)
    small = build_model(small_cfg, model.src_vocab_size, model.tgt_vocab_size, model.pad_id)
    with torch.no_grad():
        scores = decoder.combine.weight.norm(dim=1) * decoder.out.weight.norm(dim=0)
    keep = _top(scores, output_dim)
    weights = model.state_dict()
    for key in ("decoder.combine.weight", "decoder.combine.bias"):
        weights[key] = weights[key][keep]
    weights["decoder.out.weight"] = weights["decoder.out.weight"][:, keep]
    if decoder.input_feeding:  # the first layer's input is [embedding; previous h~]
        inputs = torch.cat([torch.arange(cfg.emb_dim), cfg.emb_dim + keep])
        weights["decoder.rnn.weight_ih_l0"] = weights["decoder.rnn.weight_ih_l0"][:, inputs]
    if model.copy is not None:  # the copy gate reads [h~; embedded input]
        gate = torch.cat([keep, decoder.output_dim + torch.arange(cfg.emb_dim)])
        weights["copy.gate.weight"] = weights["copy.gate.weight"][:, gate]
    small.load_state_dict(weights)
    return small, small_cfg


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest scores, in their original order."""
    return scores.topk(k).indices.sort().values


@torch.no_grad()
def _head_scores(attn: MultiHeadAttention) -> torch.Tensor:
    dh = attn.head_dim
    values = attn.kv.weight[attn.heads * dh :].view(attn.heads, dh, -1)  # [heads, dh, dim]
    outputs = attn.out.weight.view(-1, attn.heads, dh).transpose(0, 1)  # [heads, dim, dh]
    return values.flatten(1).norm(dim=1) * outputs.flatten(1).norm(dim=1)


@torch.no_grad()
def _neuron_scores(ff: FeedForward) -> torch.Tensor:
    return ff.inner.weight.norm(dim=1) * ff.outer.weight.norm(dim=0)  # [ff_dim]


def _slice_attention(
    weights: dict[str, torch.Tensor], name: str, attn: MultiHeadAttention, keep: torch.Tensor
) -> None:
    """Keep heads ``keep`` in the state dict entries of attention module ``name``."""
    dh, heads = attn.head_dim, attn.heads
    rows = (keep[:, None] * dh + torch.arange(dh)).flatten()  # the kept heads' features
    kv_rows = torch.cat([rows, rows + heads * dh])  # keys, then values
    for proj, index in (("q", rows), ("kv", kv_rows)):
        weights[f"{name}.{proj}.weight"] = weights[f"{name}.{proj}.weight"][index]
        weights[f"{name}.{proj}.bias"] = weights[f"{name}.{proj}.bias"][index]
    weights[f"{name}.out.weight"] = weights[f"{name}.out.weight"][:, rows]


def _slice_ffn(weights: dict[str, torch.Tensor], name: str, keep: torch.Tensor) -> None:
    weights[f"{name}.inner.weight"] = weights[f"{name}.inner.weight"][keep]
    weights[f"{name}.inner.bias"] = weights[f"{name}.inner.bias"][keep]
    weights[f"{name}.outer.weight"] = weights[f"{name}.outer.weight"][:, keep]
