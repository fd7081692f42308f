"""Training end to end through the Python API: resume, seeds, stopping, run directory;
and the training step itself: bf16, gradient accumulation, precision checks.

Every run is a tiny GRU on the built-in ``reverse`` task, written to a real temp dir; the
step checks drive the Trainer directly on a tiny Transformer and random token ids.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from seq2seq.api import Seq2Seq
from seq2seq.checkpoint import load_checkpoint
from seq2seq.config import from_dict, load_config
from seq2seq.data.batching import collate, token_batches
from seq2seq.data.corpus import ParallelText
from seq2seq.data.prepare import encode, fit_codecs, load_codecs, load_split
from seq2seq.data.records import SourceCut
from seq2seq.data.vocab import PAD, UNK
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.rundir import RunDir
from seq2seq.training.loop import Trainer
from seq2seq.training.loss import batch_loss
from tests.conftest import random_examples, tiny_transformer


def _sections(data: dict | None = None, **train) -> dict:
    """Config sections of a tiny, fast run; ``train`` keys override the defaults here."""
    return {
        "data": {"task": "reverse", "task_size": 240, "tokenizer": "char", **(data or {})},
        "model": {"emb_dim": 8, "hidden_dim": 16, "dropout": 0.3},
        "train": {
            "seed": 3,
            "batch_tokens": 300,
            "max_steps": 16,
            "valid_every": 8,
            "log_every": 4,
            "valid_bleu": False,
            "device": "cpu",
            **train,
        },
        "decode": {"max_len_a": 1.0, "max_len_b": 4},
    }


def _fit(out: Path, data: dict | None = None, resume: bool = False, **train) -> Seq2Seq:
    model = Seq2Seq(**_sections(data, **train))
    model.fit(out=out, resume=resume)
    return model


def _weights(run_dir: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / f"{name}.safetensors").prefixed("model.")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _progress(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "last.safetensors").trainer["progress"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Seq2Seq]:
    """One finished run (with validation BLEU) shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("trained") / "run"
    return out, _fit(out, valid_bleu=True)


# ---------------------------------------------------------------------------- resume


def test_resume_is_bitwise_identical_to_one_run(tmp_path: Path) -> None:
    # Dropout makes the result depend on the restored torch RNG state, not only weights.
    common = {"max_steps": 24, "valid_every": 8}
    _fit(tmp_path / "a", **common)
    _fit(tmp_path / "b", **{**common, "max_steps": 12})
    assert _progress(tmp_path / "b")["step"] == 12
    resumed = _fit(tmp_path / "b", resume=True, **common)
    assert resumed.progress.step == 24
    a = load_checkpoint(tmp_path / "a" / "last.safetensors")
    b = load_checkpoint(tmp_path / "b" / "last.safetensors")
    assert _same(a.prefixed("model."), b.prefixed("model."))
    assert _same(a.prefixed("optim."), b.prefixed("optim."))
    assert a.trainer["progress"]["epoch"] == b.trainer["progress"]["epoch"]
    assert a.trainer["progress"]["batch_in_epoch"] == b.trainer["progress"]["batch_in_epoch"]


def test_resume_of_finished_run_trains_no_more(tmp_path: Path) -> None:
    _fit(tmp_path, max_steps=8)
    before = _weights(tmp_path)
    model = _fit(tmp_path, resume=True, max_steps=8)
    assert model.progress.step == 8
    assert "max_steps" in model.progress.stopped
    assert _same(before, _weights(tmp_path))


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError):
        _fit(tmp_path / "empty", resume=True)


# ---------------------------------------------------------------------------- seeds


def test_same_seed_same_weights_other_seed_differs(tmp_path: Path) -> None:
    _fit(tmp_path / "one", max_steps=8, seed=5)
    _fit(tmp_path / "two", max_steps=8, seed=5)
    _fit(tmp_path / "other", max_steps=8, seed=6)
    assert _same(_weights(tmp_path / "one"), _weights(tmp_path / "two"))
    assert not _same(_weights(tmp_path / "one"), _weights(tmp_path / "other"))


# ---------------------------------------------------------------------------- stopping


def test_early_stopping(tmp_path: Path) -> None:
    # With a zero learning rate (and floor) the weights never change, so after the first
    # validation no later one improves: patience 1 stops at the second validation.
    model = _fit(tmp_path, max_steps=40, valid_every=4, patience=1, lr=0.0, min_lr=0.0)
    assert "early stopping" in model.progress.stopped
    assert model.progress.step == 8
    assert [r["step"] for r in model.progress.history] == [4, 8]
    assert "early stopping" in _progress(tmp_path)["stopped"]
    assert (tmp_path / "best.safetensors").is_file()


@pytest.mark.parametrize("metric", ["rouge", "chrf"])
def test_early_stopping_on_a_decoding_metric(tmp_path: Path, metric: str) -> None:
    model = _fit(tmp_path, max_steps=8, valid_every=4, valid_bleu=True, early_stop_metric=metric)
    first, second = model.progress.history
    for record in (first, second):
        assert {"valid_loss", "valid_bleu", f"valid_{metric}"} <= set(record)
    if metric == "rouge":
        parts = [first[f"valid_{name}"] for name in ("rouge1", "rouge2", "rougeL")]
        assert first["valid_rouge"] == pytest.approx(sum(parts) / 3)
    best = max(first[f"valid_{metric}"], second[f"valid_{metric}"])
    assert model.progress.best == best
    assert second.get("best", False) == (second[f"valid_{metric}"] > first[f"valid_{metric}"])


def test_the_coverage_loss_is_trained_on(tmp_path: Path) -> None:
    def first_loss(out: Path, coverage_loss: float) -> float:
        sections = _sections(max_steps=1, valid_every=1, coverage_loss=coverage_loss)
        sections["model"]["coverage"] = True
        model = Seq2Seq(**sections)
        model.fit(out=out)
        return model.progress.history[0]["train_loss"]

    # The same first batch and weights: the coverage term is all that differs.
    assert first_loss(tmp_path / "with", 5.0) > first_loss(tmp_path / "without", 0.0) + 0.01


def test_max_time_zero_stops_before_training(tmp_path: Path) -> None:
    model = _fit(tmp_path, max_steps=40, max_time=0.0)
    assert model.progress.step == 0
    assert "max_time" in model.progress.stopped
    assert (tmp_path / "last.safetensors").is_file()
    assert len(model.predict(["a b"])) == 1  # the (untrained) model is still usable


def test_small_time_budget_stops_early(tmp_path: Path) -> None:
    model = _fit(tmp_path, max_steps=10_000, valid_every=10_000, max_time=1e-9)
    assert "max_time" in model.progress.stopped
    assert model.progress.step == 1


def test_max_steps_reason(trained_run: tuple[Path, Seq2Seq]) -> None:
    _, model = trained_run
    assert model.progress.step == 16
    assert model.progress.stopped == "reached train.max_steps=16"


def test_max_epochs_trains_exactly_one_epoch(tmp_path: Path) -> None:
    sections = _sections(max_steps=10_000, valid_every=10_000, max_epochs=1)
    cfg = from_dict(sections)
    text = load_split(cfg.data, "train")
    src, tgt = fit_codecs(cfg.data, text, RunDir(tmp_path / "codecs"))
    examples = encode(text, src, tgt, cfg.data.max_len)
    rng = random.Random(cfg.train.seed * 100003)
    n_batches = len(token_batches(examples, cfg.train.batch_tokens, rng=rng))
    model = Seq2Seq(**sections)
    model.fit(out=tmp_path / "run")
    assert "max_epochs" in model.progress.stopped
    assert model.progress.step == n_batches


# ---------------------------------------------------------------------------- run directory


def test_run_directory_contents(trained_run: tuple[Path, Seq2Seq]) -> None:
    run_dir, model = trained_run
    for name in (
        "config.yaml",
        "last.safetensors",
        "best.safetensors",
        "train.log",
        "src_vocab.json",
        "tgt_vocab.json",
    ):
        assert (run_dir / name).is_file(), name
    assert not list(run_dir.glob("*.model"))  # no SentencePiece files for a char tokenizer
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(run_dir / "config.yaml") == model.config
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert "validation" in log and "stopping" in log
    assert model.run_dir == run_dir


def test_history_and_checkpoint_progress(trained_run: tuple[Path, Seq2Seq]) -> None:
    run_dir, model = trained_run
    assert [r["step"] for r in model.progress.history] == [8, 16]
    for record in model.progress.history:
        assert {"valid_loss", "valid_ppl", "valid_bleu"} <= set(record)
    saved = _progress(run_dir)
    assert saved["step"] == 16
    assert saved["history"] == model.progress.history


def test_weights_end_at_best_checkpoint(trained_run: tuple[Path, Seq2Seq]) -> None:
    run_dir, model = trained_run
    live = {k: v.cpu() for k, v in model.translator.model.state_dict().items()}
    assert _same(live, _weights(run_dir, "best"))


# ---------------------------------------------------------------------------- tokenizers


SP = {"tokenizer": "sentencepiece", "sp_model_type": "bpe", "vocab_size": 60}


def test_sentencepiece_run(tmp_path: Path) -> None:
    model = _fit(tmp_path, data=SP, max_steps=8)
    assert (tmp_path / "src.model").is_file() and (tmp_path / "tgt.model").is_file()
    assert (tmp_path / "src_vocab.json").is_file() and (tmp_path / "tgt_vocab.json").is_file()
    assert not (tmp_path / "joint.model").exists()
    outputs = model.predict(["a b c", "x 1"])
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    reloaded = Seq2Seq.load(tmp_path, device="cpu")
    assert reloaded.predict(["a b c", "x 1"]) == outputs


def test_sentencepiece_joint_vocab(tmp_path: Path) -> None:
    model = _fit(tmp_path, data={**SP, "joint_vocab": True}, max_steps=8)
    assert (tmp_path / "joint.model").is_file() and (tmp_path / "joint_vocab.json").is_file()
    for name in ("src.model", "tgt.model", "src_vocab.json", "tgt_vocab.json"):
        assert not (tmp_path / name).exists(), name
    translator = model.translator
    assert translator.src_codec.vocab.pieces == translator.tgt_codec.vocab.pieces
    assert len(model.predict(["a b c"])) == 1


# ---------------------------------------------------------------------------- schedules


def test_plateau_schedule_reduces_lr(tmp_path: Path) -> None:
    # Frozen weights: every validation after the first is "no improvement", and with
    # plateau_patience 0 each one halves the rate.
    _fit(
        tmp_path,
        max_steps=12,
        valid_every=4,
        schedule="plateau",
        plateau_patience=0,
        plateau_factor=0.5,
        lr=0.0,
        min_lr=0.0,
    )
    schedule = load_checkpoint(tmp_path / "last.safetensors").trainer["schedule"]
    assert schedule["scale"] == 0.25


def test_plateau_schedule_trains(tmp_path: Path) -> None:
    model = _fit(tmp_path, schedule="plateau", plateau_patience=0, valid_every=4)
    assert model.progress.step == 16


def test_noam_schedule_trains(tmp_path: Path) -> None:
    model = _fit(tmp_path, schedule="noam", warmup_steps=4, lr=3e-3)
    assert model.progress.step == 16
    assert len(model.predict(["a b"])) == 1


# ---------------------------------------------------------------------------- interruption


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the ``step``-th call of Trainer._train_step raise KeyboardInterrupt (Ctrl-C)."""
    original = Trainer._train_step
    calls = {"n": 0}

    def train_step(self, *args):
        calls["n"] += 1
        if calls["n"] == step:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(Trainer, "_train_step", train_step)


def test_interrupt_saves_last_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _interrupt_at(monkeypatch, 5)
    model = _fit(tmp_path, max_steps=16, valid_every=100)
    assert model.progress.stopped == "interrupted"
    assert (tmp_path / "last.safetensors").is_file()
    assert _progress(tmp_path)["step"] == 4
    assert model.predict(["a b"])  # falls back to the last checkpoint: there is no best


def test_resume_after_interrupt_matches_uninterrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fit(tmp_path / "whole", max_steps=8, valid_every=100)
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 5)
        _fit(tmp_path / "cut", max_steps=8, valid_every=100)
    _fit(tmp_path / "cut", resume=True, max_steps=8, valid_every=100)
    assert (
        _progress(tmp_path / "cut")["batch_in_epoch"]
        == _progress(tmp_path / "whole")["batch_in_epoch"]
    )
    assert _same(_weights(tmp_path / "whole"), _weights(tmp_path / "cut"))


# ---------------------------------------------------------------------------- one training step


def _trainer(out: Path, model: torch.nn.Module, data, **train) -> Trainer:
    """A Trainer of ``model`` on ``data`` (no validation) on the CPU; ``train`` keys override."""
    cfg = from_dict({"train": {"lr": 1e-3, "clip_grad_norm": 0.0, **train}})
    return Trainer(cfg, model, data, None, out, torch.device("cpu"))


def test_bf16_step_loss_within_one_percent_of_fp32() -> None:
    model, data = tiny_transformer(), random_examples()
    batch = collate(data, list(range(len(data))))
    args = (batch.src, batch.tgt_in, batch.tgt_out, PAD, 0.1)
    fp32 = batch_loss(model, *args).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = batch_loss(model, *args).item()
    assert bf16 == pytest.approx(fp32, rel=0.01)
    assert bf16 != fp32  # bf16 really ran


def test_accumulated_batches_equal_one_big_batch(tmp_path: Path) -> None:
    data = random_examples()
    first, second = list(range(12)), list(range(12, 24))
    a = _trainer(tmp_path / "a", tiny_transformer(), data)
    n_tokens = data.tgt_tokens(first + second)
    a._train_step([collate(data, first), collate(data, second)], n_tokens)
    b = _trainer(tmp_path / "b", tiny_transformer(), data)
    b._train_step([collate(data, first + second)], n_tokens)
    # Compare gradients: Adam's first update is ~lr * sign(grad), which would amplify
    # rounding noise in gradients that are zero in exact arithmetic (key biases).
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6), name


def test_accumulate_consumes_that_many_batches_per_step(tmp_path: Path) -> None:
    data = random_examples(60)
    trainer = _trainer(tmp_path, tiny_transformer(), data, accumulate=3, batch_tokens=40)
    trainer.step()
    assert trainer.progress.step == 1
    assert trainer.progress.batch_in_epoch == 3


def test_fp16_off_cuda_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        _trainer(tmp_path, tiny_transformer(), random_examples(), precision="fp16")


def test_long_sources_are_cut_not_dropped_in_training_and_decoding(tmp_path: Path) -> None:
    data = {"task": "reverse", "task_size": 200, "tokenizer": "word", "max_src_len": 3}
    cfg = from_dict({"data": data})
    text = load_split(cfg.data, "train")
    src, tgt = fit_codecs(cfg.data, text, RunDir(tmp_path / "codecs"))
    cut = encode(text, src, tgt, 3, cut=SourceCut(3), max_tgt_len=100)
    assert len(cut) == len(text.src)  # every pair kept
    assert max(len(row) for row in cut.src) == 3 < max(len(t.split()) for t in text.src)
    assert cut.tgt == [tgt.encode(t) for t in text.tgt]  # targets whole
    dropped = encode(text, src, tgt, 3)  # without max_src_len, max_len drops the long pairs
    assert len(dropped) < len(text.src)


@pytest.mark.parametrize("tokenizer", ["word", "sentencepiece"])
def test_a_runs_symbols_stay_whole_and_reload_with_it(tmp_path: Path, tokenizer: str) -> None:
    cfg = from_dict(
        {
            "data": {
                "tokenizer": tokenizer,
                "vocab_size": 60,
                "joint_vocab": True,
                "symbols": ["<eou>", "<2de>"],
            }
        }
    )
    src = [f"<2de> a{i % 7} b{i % 5}<eou>c{i % 3}" for i in range(60)]
    text = ParallelText(src, [f"d{i % 4} e" for i in range(60)], "train", 0)
    run = RunDir(tmp_path / "run")
    codec, _ = fit_codecs(cfg.data, text, run)
    ids = codec.encode(src[0])
    assert UNK not in ids
    assert codec.vocab.index("<eou>") in ids and codec.vocab.index("<2de>") in ids
    reloaded, _ = load_codecs(cfg.data, run)
    assert reloaded.encode(src[0]) == ids
    assert reloaded.decode(ids) == codec.decode(ids) and "<" not in codec.decode(ids)
