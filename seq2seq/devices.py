"""Device choice: the one place that turns ``auto``/``cpu``/``cuda`` into a device."""

from __future__ import annotations

import torch

from seq2seq.errors import ConfigError


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
