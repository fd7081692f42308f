"""Checkpoints: exact round trips, clear errors, atomic writes, no unpickling, averaging."""

import os
import pickle
import random

import pytest
import torch
from safetensors.torch import save_file

import seq2seq.checkpoint as checkpoint
from seq2seq.checkpoint import (
    average_checkpoints,
    load_checkpoint,
    restore_model,
    restore_optimizer,
    save_checkpoint,
)
from seq2seq.config import ModelConfig
from seq2seq.errors import CheckpointError
from seq2seq.models.build import build_model
from tests.conftest import tiny_transformer

SRC_V, TGT_V = 11, 13
CONFIG_TEXT = "model:\n  emb_dim: 8\n"
TRAINER = {"step": 2, "epoch": 0, "best": [1.5, None], "rng": "abc"}


def make_model(seed: int = 0, size: int = 8):
    torch.manual_seed(seed)
    cfg = ModelConfig(emb_dim=size, hidden_dim=size, dropout=0.0, tie_embeddings=True)
    return build_model(cfg, SRC_V, TGT_V).eval()


def inputs():
    g = torch.Generator().manual_seed(1)
    src = torch.randint(3, SRC_V, (2, 5), generator=g)
    src[1, 3:] = 0
    tgt = torch.randint(3, TGT_V, (2, 4), generator=g)
    tgt[:, 0] = 1
    return src, tgt


def trained(model):
    """An Adam optimizer that has taken two steps on ``model``."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    src, tgt = inputs()
    for _ in range(2):
        optimizer.zero_grad()
        model(src, tgt).logsumexp(-1).sum().backward()
        optimizer.step()
    return optimizer


def as_lists(value):
    """JSON keeps no tuples: compare param_groups up to tuple/list."""
    if isinstance(value, (list, tuple)):
        return [as_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: as_lists(v) for k, v in value.items()}
    return value


@pytest.fixture
def saved(tmp_path):
    model = make_model()
    optimizer = trained(model)
    path = tmp_path / "ckpt" / "last.safetensors"
    save_checkpoint(path, model, CONFIG_TEXT, optimizer=optimizer, trainer=TRAINER)
    return path, model, optimizer


def test_model_round_trip_is_exact(saved):
    path, model, _ = saved
    ckpt = load_checkpoint(path)
    assert ckpt.path == path and ckpt.config_text == CONFIG_TEXT
    assert ckpt.trainer == TRAINER
    fresh = make_model(seed=1)
    assert not torch.equal(fresh.decoder.embed.weight, model.decoder.embed.weight)
    restore_model(fresh, ckpt)
    want, got = model.state_dict(), fresh.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name
    src, tgt = inputs()
    with torch.no_grad():
        assert torch.equal(model(src, tgt), fresh(src, tgt))


def test_tied_weights_still_share_storage_after_restore(saved):
    path, _, _ = saved
    fresh = make_model(seed=1)
    restore_model(fresh, load_checkpoint(path))
    assert fresh.decoder.out.weight is fresh.decoder.embed.weight
    with torch.no_grad():
        fresh.decoder.embed.weight[0, 0] += 1.0
    assert torch.equal(fresh.decoder.out.weight, fresh.decoder.embed.weight)


def test_optimizer_round_trip_is_exact(saved):
    path, _, optimizer = saved
    fresh_model = make_model(seed=1)
    ckpt = load_checkpoint(path)
    restore_model(fresh_model, ckpt)
    fresh = torch.optim.Adam(fresh_model.parameters(), lr=1e-3)
    restore_optimizer(fresh, ckpt)
    want, got = optimizer.state_dict(), fresh.state_dict()
    assert as_lists(got["param_groups"]) == as_lists(want["param_groups"])
    assert fresh.param_groups[0]["lr"] == 1e-2
    assert want["state"].keys() == got["state"].keys() and len(want["state"]) > 0
    for idx, slots in want["state"].items():
        assert slots.keys() == got["state"][idx].keys()
        for name, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(got["state"][idx][name]))
    assert int(got["state"][0]["step"]) == 2


def test_resumed_training_matches_uninterrupted(saved):
    path, model, optimizer = saved
    fresh_model = make_model(seed=1)
    ckpt = load_checkpoint(path)
    restore_model(fresh_model, ckpt)
    fresh = torch.optim.Adam(fresh_model.parameters(), lr=1e-3)
    restore_optimizer(fresh, ckpt)
    src, tgt = inputs()
    for m, opt in ((model, optimizer), (fresh_model, fresh)):
        opt.zero_grad()
        m(src, tgt).logsumexp(-1).sum().backward()
        opt.step()
    for name, value in model.state_dict().items():
        assert torch.equal(value, fresh_model.state_dict()[name]), name


def test_truncated_file_names_the_path(saved):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_random_bytes_are_rejected(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_foreign_safetensors_file_is_rejected(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(2, 3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a seq2seq checkpoint"):
        load_checkpoint(path)
    save_file({"weight": torch.zeros(2, 3)}, str(path))
    with pytest.raises(CheckpointError, match="not a seq2seq checkpoint"):
        load_checkpoint(path)


def test_model_of_another_size_is_rejected(saved):
    path, _, _ = saved
    bigger = make_model(size=10)
    with pytest.raises(CheckpointError, match="shape mismatch") as err:
        restore_model(bigger, load_checkpoint(path))
    assert str(path) in str(err.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(CheckpointError, match="not found") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path)  # a directory is not a checkpoint either


def test_checkpoint_without_optimizer_cannot_resume(tmp_path):
    path = tmp_path / "weights.safetensors"
    model = make_model()
    save_checkpoint(path, model, CONFIG_TEXT)
    ckpt = load_checkpoint(path)
    assert ckpt.trainer is None
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore_optimizer(torch.optim.Adam(model.parameters()), ckpt)


def test_optimizer_saved_without_trainer_state_can_resume(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    model = make_model()
    optimizer = trained(model)
    save_checkpoint(path, model, CONFIG_TEXT, optimizer=optimizer)
    ckpt = load_checkpoint(path)
    assert ckpt.trainer is None
    fresh = torch.optim.Adam(make_model(seed=1).parameters(), lr=1e-3)
    restore_optimizer(fresh, ckpt)
    want, got = optimizer.state_dict(), fresh.state_dict()
    assert as_lists(got["param_groups"]) == as_lists(want["param_groups"])
    assert want["state"].keys() == got["state"].keys() and len(want["state"]) > 0
    for idx, slots in want["state"].items():
        assert slots.keys() == got["state"][idx].keys()
        for name, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(got["state"][idx][name]))


def test_average_of_identical_checkpoints_is_the_same(tmp_path):
    model = tiny_transformer()
    for name in ("a", "b"):
        save_checkpoint(tmp_path / f"{name}.safetensors", model, "cfg")
    average_checkpoints(
        [tmp_path / "a.safetensors", tmp_path / "b.safetensors"], tmp_path / "avg.safetensors"
    )
    avg = load_checkpoint(tmp_path / "avg.safetensors").prefixed("model.")
    for name, value in model.state_dict().items():
        assert torch.equal(avg[name], value), name


def test_average_is_the_mean(tmp_path):
    one, two = tiny_transformer(), tiny_transformer()
    with torch.no_grad():
        for p in two.parameters():
            p.add_(1.0)
    save_checkpoint(tmp_path / "1.safetensors", one, "cfg")
    save_checkpoint(tmp_path / "2.safetensors", two, "cfg")
    average_checkpoints(
        [tmp_path / "1.safetensors", tmp_path / "2.safetensors"], tmp_path / "avg.safetensors"
    )
    avg = load_checkpoint(tmp_path / "avg.safetensors").prefixed("model.")
    for name, value in one.state_dict().items():
        assert torch.allclose(avg[name], value + 0.5, atol=1e-6), name


def test_failed_write_keeps_the_previous_checkpoint(saved, monkeypatch):
    path, model, optimizer = saved
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        save_file(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as handle:
            handle.truncate(os.path.getsize(filename) // 2)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, make_model(seed=5), "other", optimizer=optimizer, trainer={"step": 9})
    assert path.read_bytes() == before
    ckpt = load_checkpoint(path)
    assert ckpt.config_text == CONFIG_TEXT and ckpt.trainer["step"] == 2
    restore_model(make_model(seed=1), ckpt)
    assert not list(path.parent.glob("*.tmp"))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_loading_never_unpickles(saved, monkeypatch):
    path, model, _ = saved

    def forbidden(*args, **kwargs):
        raise AssertionError("a checkpoint must not be unpickled")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    ckpt = load_checkpoint(path)
    fresh = make_model(seed=1)
    restore_model(fresh, ckpt)
    restore_optimizer(torch.optim.Adam(fresh.parameters()), ckpt)
    assert torch.equal(fresh.decoder.embed.weight, model.decoder.embed.weight)


@pytest.mark.parametrize("saved_copy", [False, True])
def test_a_copy_model_and_a_plain_one_refuse_each_others_weights(tmp_path, saved_copy):
    def model(copy: bool):
        cfg = ModelConfig(emb_dim=8, hidden_dim=8, dropout=0.0, copy=copy)
        return build_model(cfg, 12, 12)

    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model(saved_copy), CONFIG_TEXT)
    word = "unexpected" if saved_copy else "missing"
    with pytest.raises(CheckpointError, match=rf"do not fit this model \({word} copy\.gate"):
        restore_model(model(not saved_copy), load_checkpoint(path))
