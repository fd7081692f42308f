"""The Python API: build, fit on sentence pairs, predict, evaluate, save and load.

Most checks use a tiny char-level model fitted here on Python lists of pairs; the
per-call decoding settings are checked on the trained reverse runs of tests/conftest.py.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
from pathlib import Path

import pytest
import torch

from seq2seq.api import Seq2Seq
from seq2seq.config import Config, load_config
from seq2seq.data.tasks import make_task
from seq2seq.errors import CheckpointError, ConfigError, DataError
from tests.conftest import REVERSE_SOURCES, REVERSE_TARGETS, agreement, texts_of

SECTIONS = {
    "data": {"tokenizer": "char"},
    "model": {"emb_dim": 12, "hidden_dim": 16, "dropout": 0.1},
    "train": {
        "seed": 4,
        "batch_tokens": 300,
        "max_steps": 20,
        "valid_every": 10,
        "log_every": 5,
        "device": "cpu",
    },
    "decode": {"max_len_a": 1.0, "max_len_b": 4},
}
SOURCES = ["a b c", "x y", "1 2 3 4", "", "q"]


def _pairs(split: str, size: int) -> list[tuple[str, str]]:
    src, tgt = make_task("reverse", split, size, 7)
    return list(zip(src, tgt, strict=True))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Seq2Seq:
    """A model fitted on Python lists of (source, target) pairs."""
    model = Seq2Seq(**SECTIONS)
    model.fit(_pairs("train", 300), _pairs("valid", 20), out=tmp_path_factory.mktemp("fit"))
    return model


# ---------------------------------------------------------------------------- building


def test_build_from_sections() -> None:
    model = Seq2Seq(**SECTIONS)
    assert isinstance(model.config, Config)
    assert model.config.model.emb_dim == 12
    assert model.config.train.max_steps == 20
    assert model.config.model.cell == "gru"  # defaults fill the rest
    assert model.translator is None and model.run_dir is None


def test_build_from_config_with_overrides() -> None:
    base = Seq2Seq(**SECTIONS).config
    model = Seq2Seq(base, train={"lr": 1e-4})
    assert model.config.train.lr == 1e-4
    assert model.config.model == base.model


def test_build_rejects_bad_keys() -> None:
    with pytest.raises(ConfigError, match="did you mean 'hidden_dim'"):
        Seq2Seq(model={"hiden_dim": 8})
    with pytest.raises(ConfigError, match="model.dropout"):
        Seq2Seq(model={"dropout": 1.5})


@pytest.mark.parametrize("call", ["predict", "translate", "evaluate", "save"])
def test_use_before_fit_is_a_clear_error(call: str, tmp_path: Path) -> None:
    model = Seq2Seq(**SECTIONS)
    args = {
        "predict": (["a b"],),
        "translate": (["a b"],),
        "evaluate": ([("a b", "b a")],),
        "save": (tmp_path / "saved",),
    }[call]
    with pytest.raises(RuntimeError, match=r"fit\(\)"):
        getattr(model, call)(*args)


# ---------------------------------------------------------------------------- fit


def test_fit_returns_history(fitted: Seq2Seq) -> None:
    history = fitted.progress.history
    assert [r["step"] for r in history] == [10, 20]
    for record in history:
        assert {"valid_loss", "valid_ppl", "valid_bleu"} <= set(record)
    assert fitted.run_dir is not None and (fitted.run_dir / "best.safetensors").is_file()
    saved = load_config(fitted.run_dir / "config.yaml")
    assert saved == fitted.config


def test_fit_without_out_uses_a_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = Seq2Seq(**{**SECTIONS, "train": {**SECTIONS["train"], "max_steps": 2}})
    history = model.fit([("a b", "b a"), ("c d e", "e d c")])
    assert history[-1]["step"] == 2
    assert model.run_dir is not None and model.run_dir.parent == tmp_path
    assert (model.run_dir / "last.safetensors").is_file()
    assert isinstance(model.predict(["a b"])[0], str)


def test_fit_from_config_task(tmp_path: Path) -> None:
    sections = {**SECTIONS, "data": {"tokenizer": "char", "task": "sort", "task_size": 100}}
    sections["train"] = {**SECTIONS["train"], "max_steps": 4, "valid_every": 4}
    model = Seq2Seq(**sections)
    model.fit(out=tmp_path)
    scores = model.evaluate()  # the task's test split
    assert {"bleu", "chrf", "exact_match"} <= set(scores)


def test_fit_from_tsv_file(tmp_path: Path) -> None:
    tsv = tmp_path / "train.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in _pairs("train", 40)), encoding="utf-8")
    sections = {**SECTIONS, "train": {**SECTIONS["train"], "max_steps": 2}}
    model = Seq2Seq(**sections)
    model.fit(str(tsv), out=tmp_path / "run")
    assert model.progress.step == 2


def test_fit_skips_empty_pairs_and_rejects_none_usable(tmp_path: Path) -> None:
    sections = {**SECTIONS, "train": {**SECTIONS["train"], "max_steps": 1}}
    Seq2Seq(**sections).fit([("a b", "b a"), ("", "x"), ("y", "  ")], out=tmp_path / "ok")
    with pytest.raises(DataError, match="no usable sentence pairs"):
        Seq2Seq(**sections).fit([("", "x"), ("y", " ")], out=tmp_path / "bad")


def test_fit_refuses_a_directory_holding_a_run(fitted: Seq2Seq) -> None:
    before = (fitted.run_dir / "last.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a training run"):
        Seq2Seq(**SECTIONS).fit(_pairs("train", 300), out=fitted.run_dir)
    assert (fitted.run_dir / "last.safetensors").read_bytes() == before


# ---------------------------------------------------------------------------- inference


def test_predict_returns_strings(fitted: Seq2Seq) -> None:
    outputs = fitted.predict(SOURCES)
    assert len(outputs) == len(SOURCES)
    assert all(isinstance(o, str) for o in outputs)
    assert fitted.predict(iter(SOURCES)) == outputs  # any iterable, same order
    assert fitted.predict([]) == []


def test_predict_is_independent_of_batching(fitted: Seq2Seq) -> None:
    together = fitted.predict(SOURCES)
    alone = [fitted.predict([s])[0] for s in SOURCES]
    assert together == alone


def test_evaluate_pairs(fitted: Seq2Seq) -> None:
    scores = fitted.evaluate(_pairs("test", 20))
    assert {"bleu", "chrf", "exact_match"} <= set(scores)
    assert 0.0 <= scores["exact_match"] <= 1.0
    assert 0.0 <= scores["bleu"] <= 100.0
    assert set(fitted.evaluate(_pairs("test", 5), metrics=["exact"])) == {"exact_match"}


def test_evaluate_without_data_is_a_clear_error(fitted: Seq2Seq) -> None:
    with pytest.raises(DataError, match="no evaluation data"):
        fitted.evaluate()


def test_translate_with_attention(fitted: Seq2Seq) -> None:
    sources = [s for s in SOURCES if s]
    results = fitted.translate(sources, attention=True)
    assert [r.text for r in results] == fitted.predict(sources)
    for source, result in zip(sources, results, strict=True):
        assert result.src_tokens == [*source, "</s>"]
        assert result.attention is not None
        assert tuple(result.attention.shape) == (len(result.out_tokens), len(result.src_tokens))
        assert torch.allclose(result.attention.sum(-1), torch.ones(len(result.out_tokens)))
        assert isinstance(result.score, float) and result.score <= 0.0
    assert all(r.attention is None for r in fitted.translate(sources))


def test_empty_input_gives_empty_output(fitted: Seq2Seq) -> None:
    assert fitted.predict(["", "   ", "a b"])[:2] == ["", ""]
    (result,) = fitted.translate([""], attention=True)
    assert result.text == "" and result.out_tokens == []
    if result.attention is not None:
        assert tuple(result.attention.shape) == (0, len(result.src_tokens))


# ---------------------------------------------------------------------------- persistence


def test_save_load_round_trip(fitted: Seq2Seq, tmp_path: Path) -> None:
    saved = fitted.save(tmp_path / "saved")
    for name in ("config.yaml", "best.safetensors", "src_vocab.json", "tgt_vocab.json"):
        assert (saved / name).is_file(), name
    loaded = Seq2Seq.load(saved, device="cpu")
    assert loaded.config == fitted.config
    assert loaded.predict(SOURCES) == fitted.predict(SOURCES)
    sources = [s for s in SOURCES if s]
    before = fitted.translate(sources, attention=True)
    after = loaded.translate(sources, attention=True)
    assert [r.score for r in after] == [r.score for r in before]
    assert all(torch.equal(a.attention, b.attention) for a, b in zip(after, before, strict=True))
    # A loaded model saves again, to a second directory, unchanged.
    again = Seq2Seq.load(loaded.save(tmp_path / "again"), device="cpu")
    assert again.predict(SOURCES) == fitted.predict(SOURCES)


def test_load_training_run_directory(fitted: Seq2Seq) -> None:
    loaded = Seq2Seq.load(fitted.run_dir, device="cpu")
    assert loaded.predict(SOURCES) == fitted.predict(SOURCES)
    last = Seq2Seq.load(fitted.run_dir, checkpoint="last", device="cpu")
    assert len(last.predict(SOURCES)) == len(SOURCES)


def test_load_non_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a run directory"):
        Seq2Seq.load(tmp_path)


# ---------------------------------------------------------------------------- decoding settings


@pytest.fixture(scope="module")
def api_models(reverse_runs: dict[str, Path]) -> dict[str, Seq2Seq]:
    """The trained reverse runs (conftest), loaded through the API."""
    return {name: Seq2Seq.load(run, device="cpu") for name, run in reverse_runs.items()}


def test_predict_decode_overrides_are_per_call(api_models: dict, greedy_outputs: dict) -> None:
    model, sources = api_models["rnn"], REVERSE_SOURCES
    greedy = texts_of(greedy_outputs["rnn"])
    assert model.predict(sources) == greedy
    beam = model.predict(sources, method="beam", beam_size=3)
    assert len(beam) == len(sources) and all(isinstance(t, str) for t in beam)
    assert agreement(beam, REVERSE_TARGETS) >= 0.3
    assert model.translator.decode.method == "greedy"
    assert model.config.decode.method == "greedy"
    assert model.predict(sources) == greedy  # a later plain call is greedy again
    assert model.predict(sources, method="beam", beam_size=1) == greedy
    sampled = model.predict(iter(sources), method="sample", seed=4, temperature=3.0)
    assert model.predict(sources, method="sample", seed=4, temperature=3.0) == sampled
    assert model.predict(sources, quantize="int8") == model.translator.configure(quantize="int8")(
        sources
    )
    assert model.predict(sources) == greedy
    with pytest.raises(ConfigError, match=r"decode\.beam_sise"):
        model.predict(sources, beam_sise=3)


def test_translate_with_attention_and_beam(arch: str, api_models: dict) -> None:
    sources = [*REVERSE_SOURCES[:10], "", "a"]
    results = api_models[arch].translate(
        sources, attention=True, method="beam", beam_size=3, n_best=2
    )
    assert len(results) == len(sources)
    for source, r in zip(sources, results, strict=True):
        if not source:
            assert r.text == "" and r.out_tokens == []
            continue
        assert r.src_tokens == [*source.split(), "</s>"]
        assert r.out_tokens[: len(r.text.split())] == r.text.split()
        assert r.attention is not None
        assert tuple(r.attention.shape) == (len(r.out_tokens), len(r.src_tokens))
        assert torch.allclose(r.attention.sum(-1), torch.ones(len(r.out_tokens)), atol=1e-4)
        assert len(r.nbest) == 2 and r.nbest[0] == (r.text, r.score)
    plain = api_models[arch].translate(sources, method="beam", beam_size=3, n_best=2)
    # without attention the Transformer's last layer attends through SDPA: same outputs,
    # scores equal up to rounding
    for a, b in zip(plain, results, strict=True):
        assert [text for text, _ in a.nbest] == [text for text, _ in b.nbest]
        assert [s for _, s in a.nbest] == pytest.approx([s for _, s in b.nbest], abs=1e-5)
    assert all(r.attention is None for r in plain)


def test_translate_with_attention_and_sampling(api_models: dict) -> None:
    results = api_models["transformer"].translate(
        REVERSE_SOURCES[:8], attention=True, method="sample", seed=2, temperature=2.0
    )
    for r in results:
        assert tuple(r.attention.shape) == (len(r.out_tokens), len(r.src_tokens))
        assert torch.allclose(r.attention.sum(-1), torch.ones(len(r.out_tokens)), atol=1e-4)


def test_score_is_the_translators(api_models: dict, reverse_translators: dict) -> None:
    sources, targets = REVERSE_SOURCES, REVERSE_TARGETS
    values = api_models["rnn"].score(sources, iter(targets))
    assert len(values) == len(sources) and all(isinstance(v, float) for v in values)
    expected = [v for v, _ in reverse_translators["rnn"].score(sources, targets)]
    assert values == pytest.approx(expected, abs=1e-5)
    assert math.isnan(api_models["rnn"].score(["a b"], [""])[0])


def test_save_after_int8_or_bf16_keeps_the_trained_weights(
    reverse_runs: dict, tmp_path: Path
) -> None:
    model = Seq2Seq.load(reverse_runs["transformer"], device="cpu")
    plain = model.translator
    trained = {k: v.clone() for k, v in plain.base_model.state_dict().items()}
    for decode in ({"quantize": "int8"}, {"precision": "bf16"}):
        model.translator = plain.configure(**decode)
        saved = Seq2Seq.load(model.save(tmp_path / decode.popitem()[0]), device="cpu")
        weights = saved.translator.model.state_dict()
        assert all(torch.equal(weights[k], v) for k, v in trained.items())


# ---------------------------------------------------------------------------- logging


def test_fit_respects_application_log_level(tmp_path: Path) -> None:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root, handler = logging.getLogger(), Collect()
    seq2seq_logger = logging.getLogger("seq2seq")
    old_root, old_pkg = root.level, seq2seq_logger.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)  # what logging.basicConfig(level=logging.INFO) does
    try:
        sections = {**SECTIONS, "train": {**SECTIONS["train"], "max_steps": 2, "log_every": 1}}
        Seq2Seq(**sections).fit([("a b", "b a")], out=tmp_path)
        leaked = [r.getMessage() for r in records if r.levelno < logging.INFO]
        level_after = seq2seq_logger.level
    finally:
        root.removeHandler(handler)
        root.setLevel(old_root)
        seq2seq_logger.setLevel(old_pkg)
    assert "step 1" in (tmp_path / "train.log").read_text(encoding="utf-8")
    assert leaked == []
    assert level_after == old_pkg


@pytest.mark.parametrize(
    "model",
    [
        {"emb_dim": 16, "hidden_dim": 32, "copy": True},
        {"arch": "transformer", "hidden_dim": 32, "ff_dim": 64, "copy": True},
    ],
    ids=["gru-copy", "transformer-copy"],
)
def test_copy_models_train_decode_and_reload(model: dict, tmp_path: Path) -> None:
    fitted = Seq2Seq(
        data={"task": "reverse", "task_size": 400, "tokenizer": "word", "joint_vocab": True},
        model={"dropout": 0.1, **model},
        train={"max_steps": 30, "batch_tokens": 400, "valid_every": 15, "device": "cpu"},
    )
    history = fitted.fit(out=tmp_path / "run")
    assert history and all("valid_loss" in r for r in history)
    texts = ["a b c", "", "x y"]
    greedy = fitted.predict(texts)
    assert len(greedy) == 3 and greedy[1] == ""
    assert len(fitted.predict(texts, method="beam", beam_size=3)) == 3
    assert len(fitted.predict(texts, quantize="int8")) == 3
    assert len(fitted.predict(texts, precision="bf16")) == 3
    scores = fitted.score(["a b c"], ["c b a"])
    assert scores[0] < 0.0
    assert Seq2Seq.load(tmp_path / "run", device="cpu").predict(texts) == greedy


def _rare_names(seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Sentences with a made-up name among filler words -> the name. Each of 1,500 names
    occurs in training once or twice (so it is in the vocabulary, but rare)."""
    rng = random.Random(seed)
    names = sorted(
        {"".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(5)) for _ in range(1500)}
    )
    fill = "the a one please now then here there we you they".split()

    def pair(name: str) -> tuple[str, str]:
        words = [rng.choice(fill) for _ in range(rng.randint(2, 5))]
        words.insert(rng.randrange(len(words) + 1), name)
        return " ".join(words), name

    train = [pair(n) for n in names] + [pair(rng.choice(names)) for _ in range(1500)]
    return train, [pair(n) for n in names[:200]]


def test_the_copy_mechanism_learns_to_copy_rare_names() -> None:
    train, test = _rare_names()
    scores = {}
    for copy in (True, False):
        model = Seq2Seq(
            data={"tokenizer": "word", "joint_vocab": True},
            model={"emb_dim": 32, "hidden_dim": 64, "dropout": 0.1, "copy": copy},
            train={
                "max_steps": 300,
                "batch_tokens": 600,
                "lr": 3e-3,
                "valid_every": 10_000,
                "valid_bleu": False,
                "device": "cpu",
            },
            decode={"max_len_a": 0.0, "max_len_b": 4},
        )
        model.fit(train, test[:50])
        scores[copy] = model.evaluate(test, metrics=["exact"])["exact_match"]
    assert scores[True] >= 0.9 and scores[False] <= 0.4, scores
