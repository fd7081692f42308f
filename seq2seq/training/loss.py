"""Token-level cross-entropy with padding masked and label smoothing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.data.batching import Examples, collate, token_batches
from seq2seq.data.vocab import PAD
from seq2seq.training.precision import autocast


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


def _smoothed_loss(gold, gold_logp, row_sums, eps: float, vocab: int) -> torch.Tensor:
    """The summed label-smoothed loss of rows of logits, from their gold entries
    (``gold``, ``gold_logp``: the logit and log-probability of ``y``) and their sums of
    logits: ``-(1 - eps) * logp[y] - eps / V * sum_j logp_j``, where ``sum_j logp_j``
    is the row's sum of logits less ``V * lse`` and ``lse = logit[y] - logp[y]`` (which
    never underflows)."""
    lse = gold - gold_logp
    return (eps * lse - (1.0 - eps) * gold_logp - eps / vocab * row_sums).sum()


def _minus_target(probs: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """``probs - q`` in place, ``q = (1 - eps) * onehot(y) + eps / V``: the gradient of
    the summed smoothed loss with respect to the logits."""
    probs.sub_(eps / probs.size(1))
    return probs.scatter_add_(1, target.unsqueeze(1), probs.new_full((probs.size(0), 1), eps - 1.0))


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross-entropy over ``[tokens, vocab]`` logits, fused.

    The same numbers as ``F.cross_entropy(..., label_smoothing=eps, reduction="sum")``
    in fewer passes over the largest tensor of a training step: PyTorch's fused
    ``log_softmax``, one sum over the logits, and in the backward pass the
    log-probabilities become the gradient ``softmax - q`` in place (so the graph cannot
    be run backward twice).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
        y = target.unsqueeze(1)
        logp = torch.log_softmax(logits, dim=1)  # [tokens, vocab]
        gold, gold_logp = logits.gather(1, y).squeeze(1), logp.gather(1, y).squeeze(1)
        loss = _smoothed_loss(gold, gold_logp, logits.sum(1), eps, logits.size(1))
        ctx.save_for_backward(logp, target)
        ctx.eps = eps
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logp, target = ctx.saved_tensors
        return _minus_target(logp.exp_(), target, ctx.eps).mul_(grad), None, None


def smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Summed cross-entropy of ``[tokens, vocab]`` logits (no padding) against ``[tokens]``."""
    return _SmoothedCrossEntropy.apply(logits.float(), target, label_smoothing)


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross-entropy of ``features @ weight.T + bias``, the output
    layer fused with the loss: the logits are made ``rows`` at a time and each block's
    loss and gradient are taken while it is still in the cache, so the ``[tokens,
    vocab]`` logits (and their gradient) never exist whole. With ``grads``, the forward
    pass also computes the gradients of the features, weight and bias (the same two
    products as the layer's own backward pass), and the backward pass only scales them.

    A block is turned into log-probabilities in place by PyTorch's fused
    ``log_softmax`` and then into probabilities ``p``; nothing else passes over it
    but the products and the bias's column sums. The loss needs only the gold entries
    and each row's sum of logits, ``x . sum_j W_j + sum_j b_j`` (``lse = logit[y] -
    logp[y]``). The gradient is ``p - q`` with ``q = (1 - eps) * onehot(y) + eps / V``;
    in fp32, ``q``'s share of the products is added to their results (a gather and a
    rank-one term) rather than subtracted from the block. Lower-precision products
    take ``p - q`` made in fp32 first, as their rounding would otherwise cancel.

    Products run in the inputs' dtype (bf16 under autocast, as the layer would); the
    loss and the logits' gradient are fp32, and the weight's gradient is summed over
    blocks in fp32.
    """

    @staticmethod
    def forward(ctx, features, weight, bias, target, eps: float, rows: int, grads: bool):
        tokens, vocab = features.size(0), weight.size(0)
        exact = features.dtype == torch.float32  # q's share may be moved past the products
        weight_sum = weight.float().sum(0)  # [dim]: a row's logits sum to x . weight_sum + ...
        bias_sum = 0.0 if bias is None else bias.float().sum()
        if grads:
            grad_features = torch.empty_like(features)
            grad_weight = weight.new_zeros(weight.shape, dtype=torch.float32)
            grad_bias = None if bias is None else weight.new_zeros(vocab, dtype=torch.float32)
        loss = torch.zeros((), device=features.device)
        for start in range(0, tokens, rows):
            x, y = features[start : start + rows], target[start : start + rows]
            logits = (x @ weight.T if bias is None else torch.addmm(bias, x, weight.T)).float()
            gold = logits.gather(1, y.unsqueeze(1)).squeeze(1)
            logp = torch.log_softmax(logits, dim=1, out=logits)  # in place
            gold_logp = logp.gather(1, y.unsqueeze(1)).squeeze(1)
            row_sums = x.float() @ weight_sum + bias_sum  # without a pass over the block
            loss += _smoothed_loss(gold, gold_logp, row_sums, eps, vocab)
            if not grads:
                continue
            grad = logp.exp_()  # p
            if not exact:  # p - q before rounding to the products' dtype
                _minus_target(grad, y, eps)
            if grad_bias is not None:
                grad_bias += grad.sum(0)
            grad = grad.to(features.dtype)
            block_features = grad_features[start : start + rows]
            torch.mm(grad, weight, out=block_features)
            if grad_weight.dtype == grad.dtype:
                grad_weight.addmm_(grad.T, x)
            else:
                grad_weight += grad.T @ x
            if exact:  # q's share: -(1 - eps) W[y] - eps / V * weight_sum, and for W
                block_features.sub_(weight[y], alpha=1.0 - eps).sub_(weight_sum, alpha=eps / vocab)
                grad_weight.index_add_(0, y, x, alpha=eps - 1.0)
        if grads:
            if exact:  # the rest of q's share, once for all blocks
                grad_weight.sub_(features.sum(0), alpha=eps / vocab)
                if grad_bias is not None:
                    grad_bias.sub_(eps / vocab * tokens).index_add_(
                        0, target, grad_bias.new_full((tokens,), eps - 1.0)
                    )
            ctx.save_for_backward(grad_features, grad_weight, grad_bias)
            ctx.dtypes = weight.dtype, None if bias is None else bias.dtype
        return loss

    @staticmethod
    def backward(ctx, grad):
        grad_features, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        return (
            grad_features * grad.to(grad_features.dtype),
            (grad_weight * grad).to(weight_dtype),
            None if grad_bias is None else (grad_bias * grad).to(bias_dtype),
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    features: torch.Tensor,
    layer: nn.Linear,
    target: torch.Tensor,
    label_smoothing: float = 0.0,
    block: int = 2**22,
) -> torch.Tensor:
    """``smoothed_cross_entropy(layer(features), target, label_smoothing)``, fused (see
    :class:`_LinearCrossEntropy`): the same loss and gradients up to rounding, in less
    time and memory (without autograd, the loss alone).

    Args:
        features: ``[tokens, dim]``, the inputs of the output layer.
        layer: the output layer (``[vocab, dim]`` weight, optional bias).
        target: gold ids ``[tokens]`` (no padding).
        label_smoothing: mass spread uniformly over the vocabulary.
        block: logits made at a time (rows of ``vocab`` entries; 16 MB in fp32).

    Under fp16 autocast (CUDA) it is the unfused computation: the fused gradient is made
    before the loss is scaled, and fp16 would flush its small entries to zero.
    """
    weight, bias = layer.weight, layer.bias
    device = features.device.type
    if torch.is_autocast_enabled(device):  # the dtype the layer's product would take
        dtype = torch.get_autocast_dtype(device)
        if dtype == torch.float16:  # the logits' gradient would underflow before loss scaling
            return smoothed_cross_entropy(layer(features), target, label_smoothing)
        features, weight = features.to(dtype), weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
    rows = max(1, block // weight.size(0))
    grads = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (features, weight, bias)
    )
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(
            features, weight, bias, target, label_smoothing, rows, grads
        )


def batch_loss(
    model: nn.Module,
    src: torch.Tensor,
    tgt_in: torch.Tensor,
    tgt_out: torch.Tensor,
    pad_id: int,
    label_smoothing: float = 0.0,
    coverage_loss: float = 0.0,
) -> torch.Tensor:
    """Summed teacher-forced loss of a batch; padding positions skip the output layer.

    With ``coverage_loss`` (lambda), adds ``lambda * sum_t sum_i min(a_ti, c_ti)`` over
    the real target positions (See et al., 2017): the model must have coverage.

    The model (or a wrapper of it, such as DistributedDataParallel) is called as a
    module, so its own ``forward`` decides how the output distribution is made. The
    output projection is the largest matrix product of a step; asking only for the real
    target tokens saves the padding share of it, with the same result. Where the model
    has a plain :attr:`~seq2seq.models.contract.Seq2SeqModel.output_layer`, it is fused
    with the loss (:func:`linear_cross_entropy`).
    """
    keep = tgt_out.ne(pad_id)  # [batch, tgt_len]
    if not coverage_loss:
        layer = getattr(getattr(model, "module", model), "output_layer", None)  # DDP's inner
        if layer is not None:  # the output layer fused with the loss
            features = model(src, tgt_in, keep, project=False)  # [real tokens, dim]
            return linear_cross_entropy(features, layer, tgt_out[keep], label_smoothing)
        logits = model(src, tgt_in, keep)  # [real tokens, vocab]
        return smoothed_cross_entropy(logits, tgt_out[keep], label_smoothing)
    logits, penalty = model(src, tgt_in, keep, coverage_penalty=True)
    return smoothed_cross_entropy(logits, tgt_out[keep], label_smoothing) + coverage_loss * penalty


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    examples: Examples,
    batch_tokens: int,
    device: torch.device,
    precision: str = "fp32",
) -> float:
    """Mean per-token cross-entropy (no smoothing) of ``model`` on ``examples``, in
    evaluation mode (the model's mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    for index in token_batches(examples, batch_tokens):
        batch = collate(examples, index).to(device)
        with autocast(device, precision):
            total += batch_loss(model, batch.src, batch.tgt_in, batch.tgt_out, PAD).item()
        tokens += batch.n_tgt_tokens
    model.train(was_training)
    return total / max(tokens, 1)
