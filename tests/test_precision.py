"""Training precision settings: bf16 on the CPU bounds oneDNN's kernel cache."""

from __future__ import annotations

import os

import pytest
import torch

from seq2seq.training.precision import ONEDNN_CACHE, limit_kernel_cache


def test_bf16_on_cpu_bounds_the_onednn_kernel_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    limit_kernel_cache(torch.device("cpu"), "fp32")
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    limit_kernel_cache(torch.device("cpu"), "bf16")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == ONEDNN_CACHE
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")  # the user's choice wins
    limit_kernel_cache(torch.device("cpu"), "bf16")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"
