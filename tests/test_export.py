"""CTranslate2 export: float32 CTranslate2 decoding gives the native outputs.

Every Transformer variant (pre/post-norm, sinusoidal/learned positions, untied, tied and
shared embeddings) is trained briefly, exported, and decoded both ways: a mistake in the
weight mapping (sin/cos order, a forgotten final norm, k/v order, embedding scale,
epsilon, the source EOS...) changes the greedy outputs, their scores or the exported
config. A Multi30k test repeats the comparison on real data where ../shared has it.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from seq2seq.api import Seq2Seq
from seq2seq.config import DecodeConfig
from seq2seq.data.tasks import make_task
from seq2seq.data.vocab import BOS, PAD
from seq2seq.errors import CheckpointError, ConfigError, DataError
from seq2seq.inference import Translation, Translator
from seq2seq.inference.ct2 import CTranslate2Translator, export_ctranslate2
from tests.conftest import cli_error, cli_lines

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "multi30k"
SPM = ROOT.parent / "shared" / "bench" / "spm8k.model"

DECODE = {"max_len_a": 1.5, "max_len_b": 10, "batch_tokens": 600}
VARIANTS = {
    "pre-sinusoidal": ({"norm": "pre", "positions": "sinusoidal"}, False),
    "post-learned-tied": ({"norm": "post", "positions": "learned", "tie_embeddings": True}, False),
    "pre-learned-shared": ({"norm": "pre", "positions": "learned", "share_embeddings": True}, True),
    "post-sinusoidal-shared": (
        {"norm": "post", "positions": "sinusoidal", "share_embeddings": True},
        True,
    ),
}
SOURCES = make_task("dates", "test", 60, 3)[0] + ["", "   ", "7/4/1999 " * 12]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fit(out: Path, model: dict, joint: bool, steps: int = 100, arch: str = "transformer"):
    """A tiny model of the dates task with a char tokenizer, trained for ``steps`` updates."""
    sections = {
        "data": {
            "task": "dates",
            "task_size": 2000,
            "tokenizer": "char",
            "joint_vocab": joint,
            "max_len": 60,
        },
        "model": {"arch": arch, "hidden_dim": 32, "dropout": 0.0}
        | (
            {"ff_dim": 64, "heads": 4, "enc_layers": 2, "dec_layers": 2, "max_positions": 64}
            if arch == "transformer"
            else {}
        )
        | model,
        "train": {
            "max_steps": steps,
            "batch_tokens": 800,
            "lr": 3e-3,
            "label_smoothing": 0.0,
            "valid_every": 10_000,
            "valid_bleu": False,
            "log_every": 10_000,
            "device": "cpu",
            "threads": 1,
        },
        "decode": DECODE,
    }
    fitted = Seq2Seq(**sections)
    fitted.fit(out=out)
    return fitted


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory: pytest.TempPathFactory):
    """(native Seq2Seq, float32 CTranslate2Translator, export dir) for one variant."""
    pytest.importorskip("ctranslate2")
    model, joint = VARIANTS[request.param]
    work = tmp_path_factory.mktemp(request.param)
    native = _fit(work / "run", model, joint)
    out = export_ctranslate2(work / "run", work / "ct2")
    ct2 = CTranslate2Translator.from_export(out, compute_type="float32", threads=1)
    return native, ct2, out


# ---------------------------------------------------------------------------- equivalence


def test_greedy_equals_native(exported) -> None:
    native, ct2, _ = exported
    expected = native.translate(SOURCES, attention=True)
    got = ct2.translate(SOURCES, attention=True)
    assert [t.text for t in got] == [t.text for t in expected]
    assert [t.out_tokens for t in got] == [t.out_tokens for t in expected]
    assert [t.src_tokens for t in got] == [t.src_tokens for t in expected]
    masked = _masked_log_probs(native.translator, expected)
    for mine, log_prob in zip(got, masked, strict=True):
        # A wrong epsilon already moves these sums by ~1e-4.
        assert math.isclose(mine.score, log_prob, abs_tol=5e-5), (mine, log_prob)
        assert mine.nbest == ([(mine.text, mine.score)] if mine.src_tokens else [])
    assert any(t.out_tokens[-1] == "</s>" for t in expected)  # some outputs end by EOS
    assert ct2(SOURCES) == native.predict(SOURCES)


@torch.no_grad()
def _masked_log_probs(translator: Translator, outputs: list[Translation]) -> list[float]:
    """Each output's log-probability under the native model with padding and BOS left out
    of the softmax, as CTranslate2 computes it (native search does not renormalize)."""
    model, src_vocab, tgt_vocab = (
        translator.model,
        translator.src_codec.vocab,
        translator.tgt_codec.vocab,
    )
    sums = []
    for t in outputs:
        if not t.src_tokens:
            sums.append(0.0)
            continue
        src = torch.tensor([[src_vocab.index(p) for p in t.src_tokens]])  # + EOS already
        out = [tgt_vocab.index(p) for p in t.out_tokens]  # + EOS where it was produced
        logits = model(src, torch.tensor([[BOS, *out[:-1]]]))[0]
        logits[:, [PAD, BOS]] = float("-inf")
        sums.append(float(logits.log_softmax(-1).gather(1, torch.tensor(out)[:, None]).sum()))
    return sums


def test_attention_equals_native(exported) -> None:
    native, ct2, _ = exported
    expected = native.translate(SOURCES[:8], attention=True)
    got = ct2.translate(SOURCES[:8], attention=True, progress=True)
    assert ct2.has_attention
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.out_tokens == theirs.out_tokens and mine.src_tokens == theirs.src_tokens
        assert mine.attention.shape == theirs.attention.shape
        assert mine.attention.shape == (len(mine.out_tokens), len(mine.src_tokens))
        torch.testing.assert_close(mine.attention, theirs.attention, atol=1e-4, rtol=0)


def test_empty_and_long_inputs(exported, caplog: pytest.LogCaptureFixture) -> None:
    _, ct2, _ = exported
    with caplog.at_level(logging.WARNING, logger="seq2seq"):
        out = ct2.translate(["", " \t", "x" * 200, "Jan 3, 1999"])
    assert out[0].text == out[1].text == "" and out[0].src_tokens == []
    assert len(out[2].src_tokens) == 64  # cut to the model's positions, EOS included
    assert "cut to the model's 64 positions" in caplog.text
    assert len(out[2].out_tokens) <= 63  # and the output to the positions left after BOS


def test_export_is_self_contained(exported, tmp_path: Path) -> None:
    native, _, out = exported
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    names = {p.name for p in moved.iterdir()}
    assert {"model.bin", "config.json", "config.yaml"} <= names
    assert any(name.endswith("_vocab.json") for name in names)
    config = json.loads((moved / "config.json").read_text())
    assert config["layer_norm_epsilon"] == pytest.approx(1e-5)
    assert (config["unk_token"], config["bos_token"], config["eos_token"]) == (
        "<unk>",
        "<s>",
        "</s>",
    )
    assert config["decoder_start_token"] == "<s>" and config["add_source_eos"] is True
    ct2 = CTranslate2Translator.from_export(moved, compute_type="float32", threads=1)
    assert ct2(SOURCES[:10]) == native.predict(SOURCES[:10])


def test_int8_decode_settings_pick_int8(exported) -> None:
    _, _, out = exported
    ct2 = CTranslate2Translator.from_export(out, {"quantize": "int8"}, threads=1)
    assert ct2.translator.compute_type.startswith("int8")
    assert len(ct2(SOURCES[:5])) == 5


def test_configure_changes_the_search_not_the_arithmetic(exported) -> None:
    _, _, out = exported
    ct2 = CTranslate2Translator.from_export(out, threads=1)
    beam = ct2.configure(method="beam", beam_size=3, n_best=2)
    assert beam.translator is ct2.translator and ct2.decode.method == "greedy"
    assert beam(SOURCES[:5]) == CTranslate2Translator.from_export(out, beam.decode, threads=1)(
        SOURCES[:5]
    )
    assert ct2.configure() is ct2
    with pytest.raises(ConfigError, match="fixed when the export is loaded"):
        ct2.configure(quantize="int8")
    with pytest.raises(ConfigError, match="beam_size"):
        ct2.configure(beam_sise=3)


# ---------------------------------------------------------------------------- search options


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> tuple[Seq2Seq, Path]:
    """A shorter-trained first variant and its export, for the search settings."""
    pytest.importorskip("ctranslate2")
    work = tmp_path_factory.mktemp("options")
    native = _fit(work / "run", *VARIANTS["pre-sinusoidal"], steps=60)
    return native, export_ctranslate2(work / "run", work / "ct2")


def _pair(one, **decode) -> tuple[Translator, CTranslate2Translator]:
    """Native and float32 CTranslate2 translators with the same ``decode`` settings."""
    native, export = one
    translator = native.translator.configure(**decode)
    return translator, CTranslate2Translator.from_export(
        export, translator.decode, compute_type="float32", threads=1
    )


@pytest.mark.parametrize(
    "decode", [{"min_len": 12}, {"no_repeat_ngram": 2}, {"banned": ["1", "-"]}], ids=str
)
def test_search_rules_agree_with_native(one, decode: dict) -> None:
    # Forced past its natural end (min_len), this model would pick padding or BOS, which
    # both decoders ban.
    native, ct2 = _pair(one, **decode)
    assert ct2(SOURCES[:30]) == native(SOURCES[:30])


def test_beam_without_length_penalty_agrees_with_native(one) -> None:
    native, ct2 = _pair(one, method="beam", beam_size=3, n_best=2, length_penalty=0.0)
    expected = native.translate(SOURCES[:30], attention=True)
    got = ct2.translate(SOURCES[:30], attention=True)
    assert sum(a.text == b.text for a, b in zip(got, expected, strict=True)) >= 27
    assert all(len(t.nbest) == 2 and t.nbest[0] == (t.text, t.score) for t in got)
    for mine, theirs in zip(got, expected, strict=True):
        if mine.out_tokens == theirs.out_tokens:  # a beam batch gives each row its own
            torch.testing.assert_close(mine.attention, theirs.attention, atol=1e-4, rtol=0)


def test_beam_size_one_and_top_k_one_are_greedy(one) -> None:
    _, greedy = _pair(one)
    expected = greedy(SOURCES[:20])
    assert _pair(one, method="beam", beam_size=1, length_penalty=0.0)[1](SOURCES[:20]) == expected
    assert _pair(one, method="sample", top_k=1, seed=3)[1](SOURCES[:20]) == expected
    beam = _pair(one, method="beam", beam_size=4, length_penalty=1.0)[1].translate(SOURCES[:20])
    assert all(t.text and t.score < 0 for t in beam)


def test_sampling_with_a_seed_makes_a_run_reproducible(one) -> None:
    def run() -> tuple[list[str], list[str]]:
        sampler = _pair(one, method="sample", temperature=2.0, seed=11)[1]
        return sampler(SOURCES[:20]), sampler(SOURCES[:20])

    first, second = run()
    assert run() == (first, second)
    assert first != second  # one random stream per translator, as natively


def test_bans_limits_and_repeats_hold(one) -> None:
    out = _pair(one, min_len=15, max_len_a=0.0, max_len_b=18)[1].translate(SOURCES[:20])
    assert all(15 <= len(t.out_tokens) - 1 <= 18 for t in out)
    banned = _pair(one, banned=["1", "9"])[1](SOURCES[:20])
    assert not any(ch in text for text in banned for ch in "19")
    no_repeat = _pair(one, no_repeat_ngram=1)[1](SOURCES[:20])
    assert all(len(set(text)) == len(text) for text in no_repeat)
    with pytest.raises(ConfigError, match="decode.banned: '§' is not in the target vocabulary"):
        CTranslate2Translator.from_export(one[1], DecodeConfig(banned=("§",)))


# ---------------------------------------------------------------------------- errors


def test_rnn_run_cannot_be_exported(tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    run = tmp_path / "rnn"
    _fit(run, {"emb_dim": 8, "hidden_dim": 8}, False, steps=1, arch="rnn")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(run))}: only Transformer.*'rnn'"):
        export_ctranslate2(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_an_export_is_a_checkpoint_error(tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    with pytest.raises(
        CheckpointError, match=f"{re.escape(str(tmp_path))}: not a CTranslate2 export"
    ):
        CTranslate2Translator.from_export(tmp_path)


def test_unusable_compute_type_or_model_file(one, tmp_path: Path) -> None:
    out = one[1]
    with pytest.raises(ConfigError, match="compute type 'int3'"):
        CTranslate2Translator.from_export(out, compute_type="int3")
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "model.bin").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=f"{re.escape(str(broken))}: CTranslate2 cannot load"):
        CTranslate2Translator.from_export(broken)


def test_missing_ctranslate2_is_a_config_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match="pip install ctranslate2"):
        export_ctranslate2(tmp_path / "run", tmp_path / "out")
    with pytest.raises(ConfigError, match="pip install ctranslate2"):
        CTranslate2Translator.from_export(tmp_path)


def test_failed_export_leaves_nothing_and_keeps_the_old_one(one, monkeypatch, tmp_path):
    run = one[1].parent / "run"
    target = tmp_path / "ct2"
    export_ctranslate2(run, target)
    before = (target / "model.bin").read_bytes()

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("seq2seq.rundir.RunDir.copy_codecs", broken)
    with pytest.raises(DataError, match=f"cannot write export directory {re.escape(str(target))}"):
        export_ctranslate2(run, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]  # no temporary leftovers
    assert (target / "model.bin").read_bytes() == before
    monkeypatch.undo()
    export_ctranslate2(run, target)  # an earlier export is replaced


def test_refuses_to_overwrite_other_directories(one, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty and not a CTranslate2 export"):
        export_ctranslate2(one[1].parent / "run", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not (DATA / "test_2016_flickr.de").is_file() or not SPM.is_file(),
    reason=f"Multi30k ({DATA}) or the SentencePiece model ({SPM}) is absent (../shared)",
)
def test_multi30k_greedy_agrees_with_native(tmp_path: Path) -> None:
    """A small de->en Transformer (joint 8k SentencePiece), ~20 s of training on one thread."""
    pytest.importorskip("ctranslate2")
    native = Seq2Seq(
        data={
            "train": str(DATA / "train"),
            "src_lang": "de",
            "tgt_lang": "en",
            "sp_model": str(SPM),
            "joint_vocab": True,
        },
        model={
            "arch": "transformer",
            "hidden_dim": 128,
            "ff_dim": 256,
            "heads": 4,
            "enc_layers": 2,
            "dec_layers": 2,
            "dropout": 0.1,
            "share_embeddings": True,
        },
        train={
            "max_steps": 120,
            "batch_tokens": 800,
            "lr": 2e-3,
            "schedule": "noam",
            "warmup_steps": 30,
            "valid_bleu": False,
            "valid_every": 10_000,
            "device": "cpu",
            "threads": 1,
        },
        decode={"batch_tokens": 4000},
    )
    native.fit(out=tmp_path / "run")
    out = export_ctranslate2(tmp_path / "run", tmp_path / "ct2")
    ct2 = CTranslate2Translator.from_export(out, compute_type="float32", threads=1)
    sources = (DATA / "test_2016_flickr.de").read_text(encoding="utf-8").splitlines()
    assert len(sources) == 1000
    expected, got = native.translate(sources), ct2.translate(sources)
    agree = sum(a.text == b.text for a, b in zip(got, expected, strict=True))
    assert agree >= 990, f"only {agree} of 1000 greedy outputs agree"
    some = sources[::10]
    natives = native.translate(some, attention=True)
    masked = _masked_log_probs(native.translator, natives)
    for mine, theirs, log_prob in zip(ct2.translate(some), natives, masked, strict=True):
        # An output cut at its length limit is rescored by forced decoding, unmasked.
        assert any(
            math.isclose(mine.score, x, rel_tol=1e-5, abs_tol=1e-4)
            for x in (log_prob, theirs.score)
        ), (mine, log_prob, theirs.score)


# ---------------------------------------------------------------------------- command line


def test_cli_export_then_translate_with_ctranslate2(one, tmp_path: Path, capsys) -> None:
    native, export = one
    out = tmp_path / "exported"
    printed = cli_lines(["export", native.run_dir, out, "--checkpoint", "last"], capsys)
    assert "--engine ctranslate2" in "\n".join(printed)
    source = tmp_path / "in.txt"
    source.write_text("".join(s + "\n" for s in SOURCES[:8]), encoding="utf-8")
    args = ["translate", out, "-i", source, "--engine", "ctranslate2"]
    lines = cli_lines([*args, "--decode", "batch_tokens=600"], capsys)
    assert lines == native.predict(SOURCES[:8])  # float32 weights: the same outputs
    assert (
        len(cli_lines([*args, "--quantize", "int8", "--beam", "3", "--nbest", "2"], capsys))
        == 2 * 8
    )


def test_cli_engine_errors_are_one_line(one, tmp_path: Path, capsys) -> None:
    native, export = one
    message = cli_error(["translate", native.run_dir, "--engine", "ctranslate2"], capsys)
    assert "not a CTranslate2 export" in message
    argv = ["translate", export, "--engine", "ctranslate2", "--checkpoint", "x"]
    assert "drop --checkpoint" in cli_error(argv, capsys)
    rnn = _fit(tmp_path / "rnn", {}, False, steps=2, arch="rnn")
    assert "rnn" in cli_error(["export", rnn.run_dir, tmp_path / "o"], capsys)


def test_a_copy_transformer_cannot_be_exported(tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    run = tmp_path / "copy"
    _fit(run, {"copy": True}, True, steps=1)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(run))}: .*no copy head"):
        export_ctranslate2(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()
