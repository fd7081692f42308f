"""Device choice: the one place that turns ``auto``/``cpu``/``cuda`` into a device."""

from __future__ import annotations

import torch

from seq2seq.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``.

    Raises:
        ConfigError: an unknown name, or ``cuda`` on a machine without it.
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"unknown device {name!r}: use auto, cpu or cuda")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but this PyTorch build sees no CUDA GPU")
    return torch.device(name)
