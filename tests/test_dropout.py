"""The models' fast dropout: the same distribution as inverted dropout, from the seed."""

from __future__ import annotations

import pytest
import torch

from seq2seq.models.dropout import dropout


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
