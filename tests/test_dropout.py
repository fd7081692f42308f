"""The models' fast dropout: the same distribution as inverted dropout, from the seed."""

from __future__ import annotations

import math

import pytest
import torch

from seq2seq.models.dropout import (
    _LANES,
    attention_dropout,
    dropout,
    dropout_add,
    keep_mask,
    relu_dropout_linear,
)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_fast_dropout_keeps_the_distribution(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, p, training=True)
    kept = y.ne(0).float().mean().item()
    assert kept == pytest.approx(1 - p, abs=0.003)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted scaling
    assert torch.equal(dropout(x, p, training=False), x)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, training=True), y)  # reproducible from the seed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_equals_the_plain_masked_product_and_its_gradient(dtype) -> None:
    x = torch.randn(64, 33, dtype=dtype, requires_grad=True)
    grad = torch.randn(64, 33, dtype=dtype)
    torch.manual_seed(5)
    y = dropout(x, 0.2, training=True)
    y.backward(grad)
    torch.manual_seed(5)
    keep = keep_mask(x.shape, 0.2, torch.bool)
    scale = _LANES / (_LANES - round(0.2 * _LANES))
    plain = x.detach().clone().requires_grad_()
    expected = plain * keep * scale  # what autograd does with a boolean mask
    expected.backward(grad)
    assert torch.equal(y, expected)
    assert torch.equal(x.grad, plain.grad)


def test_fast_dropout_keeps_only_its_mask_for_the_backward_pass() -> None:
    saved: list[torch.Tensor] = []
    x = torch.randn(8, 16, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = dropout(x, 0.1, training=True)
    assert len(saved) == 1 and saved[0].shape == x.shape and saved[0].dtype == x.dtype
    assert torch.equal(saved[0], y.ne(0).float())  # the 0/1 mask (x has no zeros)


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32, torch.bfloat16])
def test_keep_mask_is_the_same_draw_in_every_dtype(dtype) -> None:
    torch.manual_seed(3)
    want = keep_mask((50, 70), 0.3, torch.bool)
    torch.manual_seed(3)
    got = keep_mask((50, 70), 0.3, dtype)
    assert got.dtype == dtype and torch.equal(got.bool(), want)
    assert set(got.unique().tolist()) == {0, 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_add_equals_the_residual_sum_written_out(dtype) -> None:
    """The same mask from the seed, the same values and gradients (bf16: within one
    rounding, as ``addcmul`` rounds once)."""
    torch.manual_seed(0)
    x, residual, grad = (torch.randn(64, 33, dtype=dtype) for _ in range(3))
    tolerance = {"rtol": 0, "atol": 0} if dtype == torch.float32 else {"rtol": 0, "atol": 0.07}
    results = []
    for fn in (lambda a, r: dropout_add(a, r, 0.2, True), lambda a, r: r + dropout(a, 0.2, True)):
        a, r = x.clone().requires_grad_(), residual.clone().requires_grad_()
        torch.manual_seed(5)
        out = fn(a, r)
        out.backward(grad)
        results.append((out, a.grad, r.grad))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, **tolerance)
    assert torch.equal(dropout_add(x, residual, 0.2, False), residual + x)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_relu_dropout_linear_equals_the_layers_written_out(precision, bias) -> None:
    """The same mask from the seed, the same values and gradients as ``layer(dropout(
    relu(x)))`` up to rounding (dropout's scale applied to the product rather than to its
    input); under bf16 autocast, products in bf16 as the layer's. The ReLU's input holds
    exact zeros, whose gradient is zero either way."""
    torch.manual_seed(0)
    x = torch.randn(2, 40, 33)
    x[:, ::3, ::2] = 0.0
    grad = torch.randn(2, 40, 7)
    layer = torch.nn.Linear(33, 7, bias=bias)
    results = []
    for fn in (
        lambda a: relu_dropout_linear(a, 0.2, True, layer),
        lambda a: layer(dropout(torch.relu(a), 0.2, True)),
    ):
        a = x.clone().requires_grad_()
        layer.zero_grad()
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = fn(a)
        out.backward(grad.to(out.dtype))
        params = [p.grad.clone() for p in layer.parameters()]
        results.append((out, a.grad, *params))
    tolerance = {} if precision == "fp32" else {"rtol": 0.02, "atol": 0.05}
    for got, want in zip(*results, strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tolerance)
    assert results[0][0].dtype == (torch.float32 if precision == "fp32" else torch.bfloat16)
    assert torch.equal(relu_dropout_linear(x, 0.2, False, layer), layer(torch.relu(x)))


def test_relu_dropout_linear_keeps_only_the_products_input_and_weight() -> None:
    saved: list[torch.Tensor] = []
    x = torch.randn(8, 16, requires_grad=True)
    layer = torch.nn.Linear(16, 4)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        relu_dropout_linear(x, 0.1, True, layer)
    assert len(saved) == 2 and saved[1] is layer.weight
    kept = saved[0]  # relu(x) * keep: x where positive and kept, else zero
    assert kept.shape == x.shape and torch.all((kept == 0) | (kept == x))


def _attention_written_out(q, k, v, mask, causal, p):
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    if causal:
        future = torch.ones(q.size(2), k.size(2), dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return dropout(scores.softmax(-1), p, True) @ v


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("head_dim", [16, 12])  # 1 / sqrt(12) is not a power of two
@pytest.mark.parametrize(("masked", "causal"), [(True, False), (False, True), (True, True)])
def test_attention_dropout_equals_attention_written_out(precision, head_dim, masked, causal):
    """Queries, keys and values as views of projections (as the model passes them), a
    padding mask and/or the causal one: the same mask from the seed, the same context and
    gradients up to rounding (exactly, where the scale is a power of two in fp32)."""
    torch.manual_seed(0)
    batch, heads, length = 3, 2, 7
    proj = torch.randn(batch, length, 3 * heads * head_dim)
    lengths = torch.tensor([7, 4, 6])
    mask = (torch.arange(length) < lengths[:, None])[:, None, None, :] if masked else None
    grad = torch.randn(batch, heads, length, head_dim)
    results = []
    for fn in (attention_dropout, _attention_written_out):
        leaf = proj.clone().requires_grad_()
        q, k, v = (
            t.unflatten(-1, (heads, head_dim)).transpose(1, 2) for t in leaf.chunk(3, dim=-1)
        )
        torch.manual_seed(5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = fn(q, k, v, mask, causal, 0.2)
        out.backward(grad.to(out.dtype))
        results.append((out, leaf.grad))
    exact = precision == "fp32" and head_dim == 16
    tolerance = {"rtol": 0, "atol": 0} if exact else {}
    if precision == "bf16":
        assert results[0][0].dtype == torch.bfloat16
        tolerance = {"rtol": 0.02, "atol": 0.05}  # q is scaled before the product
    for got, want in zip(*results, strict=True):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tolerance)


def test_attention_dropout_without_dropout_is_sdpa() -> None:
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(attention_dropout(q, k, v, None, True, 0.0), want)
