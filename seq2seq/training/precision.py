"""Mixed precision: bf16 autocast (CPU or CUDA) or fp16 with loss scaling (CUDA).

Master weights and optimizer state stay fp32; only the forward/backward matrix
products run in the lower precision.
"""

from __future__ import annotations

import contextlib
import os

import torch

from seq2seq.devices import resolve_precision
from seq2seq.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve(device: torch.device, precision: str) -> str:
    """``auto`` becomes bf16 where the hardware computes it natively, else fp32.

    On a CPU without AVX-512 BF16 or AMX, bf16 matrix products are emulated and run
    several times slower than fp32, so ``auto`` keeps fp32 there (and bf16 asked for
    there is warned about).
    """
    return resolve_precision(device, precision, "train.precision")


# oneDNN keeps up to 1024 compiled bf16 kernels, one per input shape, each holding its own
# reordered copy of the weights; token-count batches have many shapes, so a CPU run's
# memory grew to 8.5 GB in an hour. Measured with bench/train_speed.py on the
# JoeyNMT-matched model (160 steps): 16 entries 4,437 tgt tok/s and 2,164 MB peak RSS,
# 64 entries 4,651 and 2,828 MB, the default 1024 entries 4,086 MB.
ONEDNN_CACHE = "16"


def limit_kernel_cache(device: torch.device, precision: str) -> None:
    """Bound oneDNN's kernel cache for bf16 on the CPU (unless the user set it).

    Takes effect when called before the process's first oneDNN kernel, as the trainer
    does; later, the setting stays as it was.
    """
    if device.type == "cpu" and precision == "bf16":
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)


def autocast(device: torch.device, precision: str):
    """The autocast context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler: active for fp16 only (bf16 has fp32's range and needs none).

    Raises:
        ConfigError: fp16 asked for off CUDA, where it is neither supported nor faster.
    """
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision: fp16 needs a CUDA device; use bf16 on the CPU")
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
