"""The run directory: its file names, the best-else-last rule, and its config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seq2seq.checkpoint import save_checkpoint
from seq2seq.config import Config, dump_config, from_dict
from seq2seq.errors import CheckpointError
from seq2seq.rundir import RunDir


def _save(path: Path, value: float) -> None:
    save_checkpoint(path, {"w": torch.full((2,), value)}, dump_config(Config()))


def test_layout_names() -> None:
    run = RunDir("runs/x")
    names = [
        run.config_file,
        run.best,
        run.last,
        run.averaged,
        run.step_checkpoint(1200),
        run.vocab_file("src"),
        run.tokenizer_file("joint"),
        run.cache,
        run.log_file,
        run.curves,
        run.tensorboard,
        run.ct2_model,
    ]
    assert [p.name for p in names] == [
        "config.yaml",
        "best.safetensors",
        "last.safetensors",
        "averaged.safetensors",
        "step-00001200.safetensors",
        "src_vocab.json",
        "joint.model",
        "cache",
        "train.log",
        "curves.png",
        "tensorboard",
        "model.bin",
    ]
    assert all(p.parent == Path("runs/x") for p in names)
    assert RunDir.codec_names(False) == ("src", "tgt")
    assert RunDir.codec_names(True) == ("joint", "joint")


def test_best_falls_back_to_last_until_a_best_exists(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    with pytest.raises(CheckpointError, match=r"no checkpoint \(best.safetensors\) yet"):
        run.checkpoint("best")
    _save(run.last, 1.0)
    assert run.checkpoint("best") == run.last
    _save(run.best, 2.0)
    assert run.checkpoint("best") == run.best and run.checkpoint("last") == run.last
    with pytest.raises(CheckpointError, match="averaged.safetensors"):
        run.checkpoint("averaged")
    assert run.checkpoint("elsewhere/w.safetensors") == Path("elsewhere/w.safetensors")


def test_step_checkpoints_oldest_first(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    for step in (3000, 100, 20000):
        _save(run.step_checkpoint(step), float(step))
    assert [p.name for p in run.step_checkpoints()] == [
        "step-00000100.safetensors",
        "step-00003000.safetensors",
        "step-00020000.safetensors",
    ]


def test_load_needs_a_run_and_reads_the_named_checkpoint(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    _save(run.best, 2.0)
    with pytest.raises(CheckpointError, match="not a run directory"):
        run.load("best")
    run.save_config(from_dict({"train": {"lr": 0.5}}))
    assert torch.equal(run.load("best").tensors["model.w"], torch.full((2,), 2.0))
    assert run.config().train.lr == 0.5 and run.is_run()


def test_copy_codecs_copies_what_exists(tmp_path: Path) -> None:
    run, other = RunDir(tmp_path / "a"), RunDir(tmp_path / "b")
    run.path.mkdir()
    run.vocab_file("src").write_text("s")
    run.vocab_file("tgt").write_text("t")
    run.tokenizer_file("src").write_bytes(b"m")
    run.copy_codecs(False, other)
    assert sorted(p.name for p in other.path.iterdir()) == [
        "src.model",
        "src_vocab.json",
        "tgt_vocab.json",
    ]
    run.copy_codecs(False, run)  # onto itself: nothing happens
    assert run.vocab_file("src").read_text() == "s"
