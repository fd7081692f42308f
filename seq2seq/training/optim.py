"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import torch

from seq2seq.config import TrainConfig


def build_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """Adam or AdamW over ``params`` (tensors or param groups) with the configured betas
    and weight decay.

    PyTorch's fused kernel updates every parameter in one call where all are float
    tensors on the CPU or a CUDA GPU: ~4x faster than its default per-tensor loop on the
    CPU (about 2% of a Transformer training step), equal up to rounding.
    """
    params = list(params)
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    fused = all(t.is_floating_point() and t.device.type in ("cpu", "cuda") for t in tensors)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(
        params,
        lr=cfg.lr,
        betas=cfg.betas,
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )


class Schedule:
    """The learning rate as a function of the step, plus reduce-on-plateau.

    ``constant``: ``lr`` (after an optional linear warm-up). ``noam``: linear warm-up to
    ``lr`` over ``warmup_steps``, then decay with the inverse square root of the step,
    so ``lr`` is the peak. ``plateau``: ``lr`` (after warm-up), multiplied by
    ``plateau_factor`` whenever the validation loss has not improved for
    ``plateau_patience`` validations, never below ``min_lr``.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.scale = 1.0
        self.best = math.inf
        self.bad = 0

    def lr(self, step: int) -> float:
        """The rate for (1-based) ``step``."""
        cfg = self.cfg
        warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "noam" and cfg.warmup_steps and step > cfg.warmup_steps:
            warm = math.sqrt(cfg.warmup_steps / step)
        lr = cfg.lr * warm * self.scale
        if cfg.schedule != "constant" and step > cfg.warmup_steps:
            lr = max(lr, cfg.min_lr)  # a floor for decaying schedules only
        return lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def on_validation(self, valid_loss: float) -> None:
        """Count a validation for reduce-on-plateau."""
        if self.cfg.schedule != "plateau":
            return
        if valid_loss < self.best:
            self.best, self.bad = valid_loss, 0
            return
        self.bad += 1
        if self.bad > self.cfg.plateau_patience:
            self.scale *= self.cfg.plateau_factor
            self.bad = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad = state["scale"], state["best"], state["bad"]
