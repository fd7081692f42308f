"""Checkpoints: one safetensors file each, written atomically, never unpickled.

A checkpoint holds the model weights under ``model.*``, optionally the optimizer's
tensors under ``optim.*``, and as string metadata the resolved config (YAML) and the
trainer's state (JSON). Loading reads only tensors and strings, so a checkpoint from
an untrusted source cannot run code.

Two things keep the file small without changing what loading returns: a weight tied to
another (shared embeddings) is stored once and named in the ``tied`` metadata, and a
weight that is mostly zeros (a pruned one) is stored as a bit mask of its non-zeros
plus their values (``sparse.mask.*``, ``sparse.values.*``, its shape in ``sparse``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seq2seq.errors import CheckpointError
from seq2seq.files import atomic_write

FORMAT = "seq2seq-checkpoint-v1"
SPARSE_FROM = 0.25  # a weight with at least this share of zeros is stored sparsely


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors by name and the metadata strings."""

    path: Path
    tensors: dict[str, torch.Tensor]
    config_text: str
    trainer: dict | None
    optimizer: dict | None = None

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}


def _stored(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors as the file holds them, and the metadata that restores the rest.

    A tensor sharing storage with an earlier one (a tied weight) is not stored again;
    a weight of two or more dimensions with at least ``SPARSE_FROM`` zeros is stored as
    a packed bit mask (1 bit per entry) and its non-zero values.
    """
    out: dict[str, torch.Tensor] = {}
    first: dict[tuple, str] = {}
    tied: dict[str, str] = {}
    sparse: dict[str, list[int]] = {}
    for name, t in tensors.items():
        # the tensor itself, not a copy (a copy's address may be reused once it is freed)
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset())
        key += (t.dtype, tuple(t.shape), t.stride())
        if key in first and t.numel():
            tied[name] = first[key]
            continue
        first[key] = name
        t = t.detach().cpu().contiguous()
        if t.dim() >= 2 and t.is_floating_point() and _zero_share(t) >= SPARSE_FROM:
            keep = t.ne(0).flatten()
            out[f"sparse.mask.{name}"] = torch.from_numpy(np.packbits(keep.numpy()))
            out[f"sparse.values.{name}"] = t.flatten()[keep].clone()
            sparse[name] = list(t.shape)
        else:
            out[name] = t
    meta = {"tied": json.dumps(tied)} if tied else {}
    if sparse:
        meta["sparse"] = json.dumps(sparse)
    return out, meta


def _zero_share(t: torch.Tensor) -> float:
    return float(t.eq(0).sum()) / max(t.numel(), 1)


def _restored(tensors: dict[str, torch.Tensor], meta: dict) -> dict[str, torch.Tensor]:
    """Undo :func:`_stored`: dense sparse weights, and tied names pointing at one tensor."""
    out = {k: v for k, v in tensors.items() if not k.startswith("sparse.")}
    for name, shape in json.loads(meta.get("sparse", "{}")).items():
        numel = int(np.prod(shape))
        bits = tensors[f"sparse.mask.{name}"].numpy()
        keep = torch.from_numpy(np.unpackbits(bits, count=numel).astype(bool))
        values = tensors[f"sparse.values.{name}"]
        dense = values.new_zeros(numel)
        dense[keep] = values
        out[name] = dense.view(shape)
    for name, source in json.loads(meta.get("tied", "{}")).items():
        out[name] = out[source]
    return out


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(
    path: Path,
    model: torch.nn.Module | dict[str, torch.Tensor],
    config_text: str,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    trainer: dict | None = None,
) -> None:
    """Write a checkpoint atomically: a crash mid-write leaves the previous file intact.

    Args:
        path: the ``.safetensors`` file to (re)write.
        model: a module (its ``state_dict``) or a state dict; saved under ``model.*``.
        config_text: the resolved config as YAML.
        optimizer: saved too when given (for resuming).
        trainer: JSON-serialisable trainer state (step, data position, RNG, ...).
    """
    weights = model if isinstance(model, dict) else model.state_dict()
    tensors = {f"model.{k}": v for k, v in weights.items()}
    meta = {"format": FORMAT, "config": config_text}
    stored, layout = _stored(tensors)
    meta.update(layout)
    if optimizer is not None:
        opt_tensors, opt_meta = _optimizer_tensors(optimizer)
        stored.update({k: v.detach().cpu().contiguous() for k, v in opt_tensors.items()})
        meta["optimizer"] = json.dumps(opt_meta)
    if trainer is not None:
        meta["trainer"] = json.dumps(trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(stored, tmp, metadata=meta))


def _read_metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing, truncated, corrupt, or not one of ours.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        meta = _read_metadata(path)
        tensors = _restored(load_file(str(path)), meta)
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {err}"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a seq2seq checkpoint (format tag "
            f"{meta.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        trainer = json.loads(meta["trainer"]) if "trainer" in meta else None
        optimizer = json.loads(meta["optimizer"]) if "optimizer" in meta else None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupt trainer state in the checkpoint ({err})") from None
    return Checkpoint(path, tensors, meta.get("config", ""), trainer, optimizer)


def restore_model(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    """Load the checkpoint's weights into ``model``.

    Raises:
        CheckpointError: when names or shapes differ from the model's (naming a few).
    """
    weights = ckpt.prefixed("model.")
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    shapes = [
        f"{k} {tuple(weights[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or extra or shapes:
        detail = "; ".join(
            filter(
                None,
                [
                    missing and f"missing {', '.join(missing[:3])}",
                    extra and f"unexpected {', '.join(extra[:3])}",
                    shapes and f"shape mismatch {', '.join(shapes[:3])}",
                ],
            )
        )
        raise CheckpointError(f"{ckpt.path}: weights do not fit this model ({detail})")
    model.load_state_dict(weights)


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Load the optimizer state saved with :func:`save_checkpoint`."""
    if ckpt.optimizer is None:
        raise CheckpointError(f"{ckpt.path}: holds no optimizer state to resume from")
    opt_meta = ckpt.optimizer
    state: dict[int, dict] = {}
    for name, value in ckpt.prefixed("optim.").items():
        idx, slot = name.split(".", 1)
        state.setdefault(int(idx), {})[slot] = value
    for name, value in opt_meta["scalars"].items():
        idx, slot = name.split(".", 1)
        state.setdefault(int(idx), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": opt_meta["param_groups"]})


def average_checkpoints(paths: list[Path], out: Path) -> None:
    """Write the element-wise mean of several checkpoints' weights to ``out``.

    Floating-point tensors are averaged (in fp64, then cast back); integer buffers are
    taken from the last checkpoint. The config of the last checkpoint is kept.

    Raises:
        CheckpointError: no paths, or checkpoints whose tensors differ in names or shapes.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    ckpts = [load_checkpoint(p) for p in paths]
    weights = [c.prefixed("model.") for c in ckpts]
    for c, w in zip(ckpts[1:], weights[1:], strict=True):
        if w.keys() != weights[0].keys() or any(
            w[k].shape != v.shape for k, v in weights[0].items()
        ):
            raise CheckpointError(f"{c.path}: its weights do not match {ckpts[0].path}'s")
    mean = {}
    for name, last in weights[-1].items():
        if last.is_floating_point():
            total = sum(w[name].double() for w in weights)
            mean[name] = (total / len(weights)).to(last.dtype)
        else:
            mean[name] = last
    save_checkpoint(out, mean, ckpts[-1].config_text)
