"""Precision settings: bf16 on the CPU bounds oneDNN's kernel cache; ``auto`` (training
and decoding) is bf16 only where the CPU computes it natively, and bf16 asked for where
it is emulated is warned about."""

from __future__ import annotations

import logging
import os
import platform
import sys

import pytest
import torch

from seq2seq.config import DecodeConfig
from seq2seq.devices import (
    cpu_bf16_features,
    cpu_bf16_summary,
    keep_freed_cpu_memory,
    native_bf16,
)
from seq2seq.inference.compress import for_inference
from seq2seq.inference.ct2 import compute_type_for
from seq2seq.training.precision import ONEDNN_CACHE, limit_kernel_cache, resolve
from tests.conftest import tiny_transformer


def test_bf16_on_cpu_bounds_the_onednn_kernel_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    limit_kernel_cache(torch.device("cpu"), "fp32")
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ
    limit_kernel_cache(torch.device("cpu"), "bf16")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == ONEDNN_CACHE
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")  # the user's choice wins
    limit_kernel_cache(torch.device("cpu"), "bf16")
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"


@pytest.fixture(params=[True, False], ids=["native-bf16", "emulated-bf16"])
def cpu_bf16(request, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Pretend the CPU has (or lacks) AVX-512 BF16 / AMX."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda native=request.param: native, raising=False)
    return request.param


def test_auto_is_bf16_only_where_native(cpu_bf16: bool) -> None:
    cpu = torch.device("cpu")
    assert native_bf16(cpu) is cpu_bf16
    assert resolve(cpu, "auto") == ("bf16" if cpu_bf16 else "fp32")
    assert resolve(cpu, "fp32") == "fp32"
    assert ("native" in cpu_bf16_summary()) is cpu_bf16


@pytest.mark.parametrize(
    "cap, left",
    [
        ("AVX512_CORE_VNNI", []),
        ("avx2", []),
        ("AVX512_CORE_BF16", ["avx512_bf16"]),
        ("ALL", ["avx512_bf16", "amx"]),
    ],
)
def test_a_onednn_isa_cap_takes_the_features_it_forbids(monkeypatch, cap, left) -> None:
    """ONEDNN_MAX_CPU_ISA imitates a CPU without native bf16: auto then picks fp32 and
    benchmark tables say so, naming the cap."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: True, raising=False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert [name for name, on in cpu_bf16_features().items() if on] == left
    assert native_bf16(torch.device("cpu")) is bool(left)
    assert resolve(torch.device("cpu"), "auto") == ("bf16" if left else "fp32")
    assert cpu_bf16_summary().endswith(f"[ONEDNN_MAX_CPU_ISA={cap}]")


def test_decoding_in_auto_precision_follows_the_cpu(cpu_bf16: bool, caplog) -> None:
    model = tiny_transformer()
    prepared = for_inference(model, DecodeConfig(precision="auto"))
    dtype = next(prepared.parameters()).dtype
    assert dtype == (torch.bfloat16 if cpu_bf16 else torch.float32)
    assert prepared is not model or not cpu_bf16  # the trained model itself never changes
    assert compute_type_for(DecodeConfig(precision="auto")) == (
        "bfloat16" if cpu_bf16 else "float32"
    )
    with caplog.at_level(logging.WARNING, logger="seq2seq"):
        for_inference(model, DecodeConfig(precision="bf16"))  # asked for: kept either way
        resolve(torch.device("cpu"), "bf16")
    warned = caplog.text.count("emulated and runs several times slower than fp32")
    assert warned == (0 if cpu_bf16 else 2)
    assert "decode.precision: bf16" in caplog.text or cpu_bf16


def test_training_keeps_freed_cpu_memory_where_glibc_allows() -> None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's; elsewhere memory is left to the C library")
    assert keep_freed_cpu_memory() is True
