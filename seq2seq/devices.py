"""Device choice: the one place that turns ``auto``/``cpu``/``cuda`` into a device, and
the one that says whether a device computes bf16 natively (``precision: auto``)."""

from __future__ import annotations

import ctypes
import logging
import os
import sys

import torch

from seq2seq.errors import ConfigError

log = logging.getLogger("seq2seq")

# torch.cpu's probes (private in torch 2.x) for the CPU features that compute bf16 natively
_CPU_BF16_PROBES = {"avx512_bf16": "_is_avx512_bf16_supported", "amx": "_is_amx_tile_supported"}
# ONEDNN_MAX_CPU_ISA values that keep oneDNN, which runs PyTorch's bf16 matrix products on
# the CPU, from using each feature (a machine without it can be imitated so)
_BELOW_BF16 = {
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
}
_ISA_CAPS_WITHOUT = {
    "avx512_bf16": _BELOW_BF16,
    "amx": _BELOW_BF16 | {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX10_1_512"},
}


def pick_device(name: str = "auto", index: int | None = None) -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``.

    ``index`` picks one GPU of several (a training rank's ``LOCAL_RANK``); it is ignored
    on the CPU.

    Raises:
        ConfigError: an unknown name, ``cuda`` on a machine without it, or an index
            past the GPUs there are.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but this PyTorch build sees no CUDA GPU")
    if name == "cuda" and index is not None:
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"GPU {index} was asked for (LOCAL_RANK={index}), but this machine has "
                f"{torch.cuda.device_count()}: start at most that many processes per node"
            )
        return torch.device("cuda", index)
    return torch.device(name)


def cpu_bf16_features() -> dict[str, bool]:
    """Which of the CPU's native bf16 features (AVX-512 BF16, AMX) it has and oneDNN may
    use (``ONEDNN_MAX_CPU_ISA`` can forbid them)."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return {
        name: bool(getattr(torch.cpu, probe, lambda: False)())
        and cap not in _ISA_CAPS_WITHOUT[name]
        for name, probe in _CPU_BF16_PROBES.items()
    }


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, or a CPU
    with AVX-512 BF16 or AMX (elsewhere bf16 matrix products are emulated and run
    several times slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return any(cpu_bf16_features().values())


def resolve_precision(device: torch.device, precision: str, key: str) -> str:
    """``auto`` becomes bf16 where ``device`` computes it natively, else fp32; bf16 asked
    for where it is emulated is kept, with a warning naming the config ``key``."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        log.warning(
            "%s: bf16 on a CPU without AVX-512 BF16 or AMX is emulated and runs several "
            "times slower than fp32; use fp32, or auto to pick bf16 where it is native",
            key,
        )
    return precision


def cpu_bf16_summary() -> str:
    """One line for benchmark tables: the CPU's native bf16 features."""
    features = cpu_bf16_features()
    has = [name for name, present in features.items() if present]
    line = (
        f"CPU bf16: native ({', '.join(has)})"
        if has
        else "CPU bf16: emulated (no AVX-512 BF16, no AMX): bf16 is slower than fp32 here"
    )
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    return f"{line} [ONEDNN_MAX_CPU_ISA={cap}]" if cap else line


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 2**31 - 1  # the largest value mallopt takes (an int)


def keep_freed_cpu_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the
    system at once.

    A training step allocates tensors of hundreds of MB (the ``[tokens, vocab]``
    logits and their gradient) and frees them again, and a decoding step tens of MB
    (``[rows, vocab]`` logits and log-probabilities); glibc serves blocks that large
    with fresh ``mmap`` pages each time, so every step pays page faults to zero them
    (~8% of a CPU training step of the matched Transformer, ~10% of a beam-5 decoding
    step). Raising the mmap and trim thresholds makes later steps reuse the same
    memory; peak memory stays about the same, but it is returned to the system only at
    exit. Training and every CPU :class:`~seq2seq.inference.Translator` call it.

    Returns:
        Whether it applied (False where the C library is not glibc, e.g. macOS).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_KEEP_BYTES))
        and mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(_KEEP_BYTES))
    )
