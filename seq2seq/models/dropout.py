"""Inverted dropout with a cheaper source of random bits on the CPU.

``torch.nn.functional.dropout`` on the CPU draws one random number per element
(``bernoulli_``) and was a fifth of a Transformer training step here. Drawing 64 random
bits per four elements (one 16-bit lane each) is ~5x cheaper and gives the same
distribution up to ``p`` rounded to a multiple of 1/65536. The bits come from NumPy's
SFC64 generator, about twice as fast as PyTorch's Mersenne Twister, seeded for each mask
by a draw from PyTorch's generator: masks follow ``torch.manual_seed`` and a resumed
run's restored generator. Other devices use PyTorch's dropout.

The mask is a 0/1 tensor of the input's dtype, written by the comparison itself:
multiplying a float tensor by a boolean one takes PyTorch's slow mixed-dtype path (~10x
a same-dtype product on the CPU), and a boolean mask converted afterwards costs a pass
more each way. It is kept for the backward pass. Three common neighbours are fused with
it: the residual sum (:func:`dropout_add`, one pass instead of three), a ReLU before it
with the product after it (:func:`relu_dropout_linear`, whose backward pass reads the
mask off the product's input), and the softmax and products of attention
(:func:`attention_dropout`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_LANES = 65536  # 16-bit lanes


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """A mask of ``shape`` and ``dtype``, 1 with probability ``1 - p`` (``p`` in 1/65536
    steps) and 0 otherwise."""
    n = 1
    for size in shape:
        n *= size
    seed = int(torch.randint(2**63 - 1, ()))  # from PyTorch's generator
    words = np.random.SFC64(seed).random_raw((n + 3) // 4)  # uint64
    lanes = torch.from_numpy(words.view(np.int16))[:n].view(shape)  # uniform, 16 bits
    return torch.ge(lanes, round(p * _LANES) - _LANES // 2, out=torch.empty(shape, dtype=dtype))


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Functional form of :class:`Dropout`."""
    if not _cheaper(x, p, training):
        return F.dropout(x, p, training) if training and p > 0.0 else x
    return _Masked.apply(x, keep_mask(x.shape, p, x.dtype), _scale(p))


def dropout_add(x: torch.Tensor, residual: torch.Tensor, p: float, training: bool):
    """``residual + dropout(x, p, training)``."""
    if not _cheaper(x, p, training):
        return residual + dropout(x, p, training)
    return _MaskedAdd.apply(x, residual, keep_mask(x.shape, p, x.dtype), _scale(p))


def relu_dropout_linear(
    x: torch.Tensor, p: float, training: bool, layer: nn.Linear
) -> torch.Tensor:
    """``layer(dropout(relu(x), p, training))``, the second half of a feed-forward block.

    Its products run in the dtype the layer's would (bf16 under autocast).
    """
    if not _cheaper(x, p, training):
        return layer(dropout(torch.relu(x), p, training))
    x, weight, bias = _autocast_operands(x, layer.weight, layer.bias)
    rows = x.reshape(-1, x.size(-1))  # [tokens, inner]
    keep = keep_mask(rows.shape, p, rows.dtype)
    with torch.autocast("cpu", enabled=False):
        out = _ReluMaskedLinear.apply(rows, keep, _scale(p), weight, bias)
    return out.view(*x.shape[:-1], -1)


def attention_dropout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    p: float,
) -> torch.Tensor:
    """Training attention: ``dropout(softmax(q k^T / sqrt(dh)), p) v``, what
    ``F.scaled_dot_product_attention`` computes with ``dropout_p=p``, which it is on
    other devices.

    Args:
        q: queries ``[batch, heads, q_len, dh]``; k, v: ``[batch, heads, k_len, dh]``
            (views of the projections, in any strides).
        mask: True where a key may be attended, broadcastable to ``[batch, heads,
            q_len, k_len]``; None for none.
        causal: whether query ``i`` also sees only keys ``<= i``.

    Returns:
        The context, ``[batch, heads, q_len, dh]``.
    """
    if not _cheaper(q, p, True):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal
        )
    q, k, v = _autocast_operands(q, k, v)
    with torch.autocast("cpu", enabled=False):
        return _MaskedAttention.apply(q, k, v, mask, causal, p)


def _autocast_operands(*tensors: torch.Tensor | None) -> tuple:
    """The tensors in the dtype CPU autocast gives products (unchanged without it), so
    that the fused functions here compute in the dtype the unfused layers would."""
    if not torch.is_autocast_enabled("cpu"):
        return tensors
    dtype = torch.get_autocast_dtype("cpu")
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def _cheaper(x: torch.Tensor, p: float, training: bool) -> bool:
    """Whether the masks of this module apply (else PyTorch's dropout, or none)."""
    return training and 0.0 < p < 1.0 and x.device.type == "cpu"


def _scale(p: float) -> float:
    """``1 / (1 - p)`` for ``p`` as the lanes round it. A Python float, so a bf16 input
    is not scaled by a rounded value."""
    return _LANES / (_LANES - round(p * _LANES))


def _masked(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """``x * keep * scale``."""
    return (x * keep).mul_(scale)


class _Masked(torch.autograd.Function):
    """``x * keep * scale`` whose backward pass keeps only ``keep``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _masked(x, keep, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return _masked(grad, keep, ctx.scale), None, None


class _MaskedAdd(torch.autograd.Function):
    """``residual + x * keep * scale`` in one pass (``addcmul``); keeps only ``keep``."""

    @staticmethod
    def forward(ctx, x, residual, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.addcmul(residual, x, keep, value=scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return _masked(grad, keep, ctx.scale), grad, None, None


class _ReluMaskedLinear(torch.autograd.Function):
    """``(relu(x) * keep) @ weight.T * scale + bias``: dropout's scale goes into the
    products (``addmm``'s ``alpha``), forward and backward, so no pass over the
    activations applies it. Keeps ``relu(x) * keep``, the product's input, which also
    says where the gradient flows (where it is positive), and the weight."""

    @staticmethod
    def forward(ctx, x, keep: torch.Tensor, scale: float, weight, bias) -> torch.Tensor:
        kept = torch.mul(x, keep).clamp_min_(0.0)  # [tokens, inner]
        ctx.save_for_backward(kept, weight)
        ctx.scale, ctx.bias = scale, bias is not None
        if bias is None:  # beta=0: the first argument is not read
            return torch.addmm(kept.new_empty(()), kept, weight.T, beta=0, alpha=scale)
        return torch.addmm(bias, kept, weight.T, alpha=scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        kept, weight = ctx.saved_tensors
        grad_kept = torch.addmm(grad.new_empty(()), grad, weight, beta=0, alpha=ctx.scale)
        grad_x = torch.ops.aten.threshold_backward(grad_kept, kept, 0)
        grad_weight = torch.addmm(weight.new_empty(()), grad.T, kept, beta=0, alpha=ctx.scale)
        return grad_x, None, None, grad_weight, grad.sum(0) if ctx.bias else None


class _MaskedAttention(torch.autograd.Function):
    """:func:`attention_dropout` in fewer passes than autograd would make: the scale
    goes into the copy of ``q`` that the product needs anyway, the masks are filled in
    place, and the backward pass is written out (the dropped weights made again from
    the saved ones and the mask, ``_softmax_backward_data`` for the softmax). Keeps
    ``q`` (scaled), ``k`` and ``v`` as the products read them, the softmax's output and
    the mask."""

    @staticmethod
    def forward(ctx, q, k, v, mask, causal: bool, p: float) -> torch.Tensor:
        b, h, t, dh = q.shape
        s = k.size(2)
        scale = dh**-0.5
        q = torch.mul(q, scale, out=q.new_empty(b, h, t, dh)).view(b * h, t, dh)
        k, v = k.reshape(b * h, s, dh), v.reshape(b * h, s, dh)  # copies
        scores = torch.bmm(q, k.transpose(1, 2)).view(b, h, t, s)
        if mask is not None:
            scores.masked_fill_(~mask, float("-inf"))
        if causal:
            future = torch.ones(t, s, dtype=torch.bool, device=q.device).triu(1)
            scores.masked_fill_(future, float("-inf"))
        weights = torch.softmax(scores, -1)
        keep = keep_mask(weights.shape, p, weights.dtype)
        ctx.save_for_backward(q, k, v, weights, keep)
        ctx.scale, ctx.dropout_scale = scale, _scale(p)
        dropped = _masked(weights, keep, ctx.dropout_scale).view(b * h, t, s)
        return torch.bmm(dropped, v).view(b, h, t, dh)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, k, v, weights, keep = ctx.saved_tensors
        b, h, t, s = weights.shape
        grad = grad.reshape(b * h, t, -1)
        dropped = _masked(weights, keep, ctx.dropout_scale).view(b * h, t, s)
        grad_v = torch.bmm(dropped.transpose(1, 2), grad)
        grad_dropped = torch.bmm(grad, v.transpose(1, 2)).view(b, h, t, s)
        grad_weights = grad_dropped.mul_(keep).mul_(ctx.dropout_scale)
        grad_scores = torch._softmax_backward_data(grad_weights, weights, -1, weights.dtype)
        grad_scores = grad_scores.view(b * h, t, s)
        grad_q = torch.baddbmm(q.new_empty(()), grad_scores, k, beta=0, alpha=ctx.scale)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), q)  # q is scaled already
        shape = b, h, -1, q.size(-1)
        return grad_q.view(shape), grad_k.view(shape), grad_v.view(shape), None, None, None


class Dropout(nn.Module):
    """Drop-in ``nn.Dropout`` that uses :func:`dropout`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
