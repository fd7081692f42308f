"""The engine interface: both engines implement it, its phases make ``translate``, and
decoding is safe from several threads at once (untrained tiny models: exact equality)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from seq2seq.checkpoint import save_checkpoint
from seq2seq.config import dump_config, from_dict
from seq2seq.data.prepare import fit_codecs, load_split
from seq2seq.data.records import SourceCut
from seq2seq.errors import ConfigError, DataError
from seq2seq.inference import Engine, Translator, evaluate
from seq2seq.models.build import build_model
from seq2seq.rundir import RunDir

MODELS = {
    "rnn": {"emb_dim": 16, "hidden_dim": 16, "dropout": 0.3},
    "transformer": {
        "arch": "transformer",
        "hidden_dim": 16,
        "heads": 2,
        "ff_dim": 32,
        "dropout": 0.3,
        "max_positions": 64,
    },
}
SOURCES = [
    "March 3, 2021",
    "",
    "the 4th of July 1999",
    "12/25/07",
    "   ",
    "Sunday, 1 January 2023",
    "1 feb 2000",
] * 3


def _config(arch: str):
    return from_dict(
        {
            "data": {"task": "dates", "task_size": 200, "tokenizer": "char", "max_len": 40},
            "model": MODELS[arch],
            "train": {"device": "cpu"},
            "decode": {"max_len_a": 0.0, "max_len_b": 12, "batch_tokens": 60},
        }
    )


def _write_run(path: Path, arch: str) -> RunDir:
    """A run directory holding an untrained model: config, tokenizers and best checkpoint."""
    cfg = _config(arch)
    run = RunDir(path)
    codecs = fit_codecs(cfg.data, load_split(cfg.data, "train"), run)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(codecs[0].vocab), len(codecs[1].vocab))
    run.save_config(cfg)
    save_checkpoint(run.best, model, dump_config(cfg))
    return run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RunDir]:
    base = tmp_path_factory.mktemp("engine")
    return {arch: _write_run(base / arch, arch) for arch in MODELS}


@pytest.fixture(scope="module")
def translators(runs: dict[str, RunDir]) -> dict[str, Translator]:
    return {arch: Translator.from_run(run.path, device="cpu") for arch, run in runs.items()}


@pytest.fixture(params=sorted(MODELS))
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


def _by_phases(engine: Engine, texts: list[str], attention: bool = False) -> list:
    """What a server does: encode, decode batches of rows, finish each row."""
    rows = engine.encode(texts)
    real = [i for i, t in enumerate(texts) if t.strip()]
    results = {}
    for batch in engine.batches([rows[i] for i in real]):
        index = [real[j] for j in batch]
        decoded = engine.decode_batch([rows[i] for i in index], attention)
        for i, hyps in zip(index, decoded, strict=True):
            results[i] = engine.finish(rows[i], hyps)
    return [results[i].text if i in results else "" for i in range(len(texts))]


def _in_threads(work, count: int = 4) -> list:
    """Run ``work(i)`` for i < count in as many threads at once; their results in order."""
    results: list = [None] * count
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_the_native_translator_is_an_engine(translators: dict) -> None:
    assert all(isinstance(t, Engine) for t in translators.values())


def test_phases_make_translate(arch: str, translators: dict) -> None:
    translator = translators[arch]
    assert len(translator.batches([r for r in translator.encode(SOURCES) if r])) > 1
    for method in ({}, {"method": "beam", "beam_size": 3}):
        engine = translator.configure(**method)
        assert _by_phases(engine, SOURCES) == engine(SOURCES)


def test_encode_gives_one_row_per_text(translators: dict) -> None:
    rows = translators["rnn"].encode(["", "1 feb 2000"])
    assert rows[0] == [] and len(rows[1]) == len("1 feb 2000")  # characters, EOS not yet


def test_translator_puts_its_model_in_eval_mode_once(tmp_path: Path) -> None:
    cfg = _config("rnn")
    codecs = fit_codecs(cfg.data, load_split(cfg.data, "train"), RunDir(tmp_path))
    model = build_model(cfg.model, len(codecs[0].vocab), len(codecs[1].vocab))
    assert model.training
    translator = Translator(model, *codecs, cfg.decode)
    assert not model.training

    def refuse(mode: bool = True):
        raise AssertionError("decoding changed the model's mode")

    model.train = refuse  # type: ignore[method-assign]
    model.eval = refuse  # type: ignore[method-assign]
    assert len(translator(SOURCES)) == len(SOURCES)
    assert len(translator.score(SOURCES[:3], ["2021-03-03"] * 3)) == 3


@pytest.mark.parametrize("method", [{}, {"method": "beam", "beam_size": 3}])
def test_threads_decoding_at_once_get_the_sequential_outputs(
    arch: str, method: dict, translators: dict
) -> None:
    translator = translators[arch].configure(**method)
    texts = [SOURCES[i:] + SOURCES[:i] for i in range(4)]
    expected = [translator(t) for t in texts]
    assert _in_threads(lambda i: translator(texts[i])) == expected


def test_seeded_samplers_in_threads_draw_their_own_streams(translators: dict) -> None:
    base = translators["rnn"]

    def draw(seed: int) -> list[list[str]]:
        sampler = base.configure(method="sample", seed=seed, temperature=2.0)
        return [sampler(SOURCES), sampler(SOURCES)]

    expected = [draw(seed) for seed in range(4)]
    assert _in_threads(draw) == expected
    assert expected[0][0] != expected[0][1] and expected[0] != expected[1]


def test_evaluate_scores_the_engines_outputs(translators: dict) -> None:
    translator = translators["rnn"]
    refs = [t or "x" for t in translator(SOURCES)]  # scored against its own outputs
    result = evaluate(translator, SOURCES, refs, ["exact", "bleu"])
    assert result.hypotheses == translator(SOURCES)
    blank = sum(not t.strip() for t in SOURCES)
    assert result.scores["exact_match"] == pytest.approx(1 - blank / len(SOURCES))
    assert set(result.scores) == {"exact_match", "bleu", "bleu_signature"}


def test_evaluate_checks_before_decoding(translators: dict) -> None:
    translator = translators["rnn"]
    with pytest.raises(ConfigError, match="meteor"):
        evaluate(translator, ["a"], ["a"], ["bleu", "meteor"])
    with pytest.raises(ConfigError, match="empty list"):
        evaluate(translator, ["a"], ["a"], [])
    with pytest.raises(DataError, match="2 lines but the references has 1"):
        evaluate(translator, ["a", "b"], ["a"])


# ---------------------------------------------------------------------------- CTranslate2


@pytest.fixture(scope="module")
def ct2_engine(runs: dict, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("ctranslate2")
    from seq2seq.inference.ct2 import CTranslate2Translator, export_ctranslate2

    out = export_ctranslate2(runs["transformer"].path, tmp_path_factory.mktemp("ct2") / "x")
    return CTranslate2Translator.from_export(out, device="cpu", threads=1)


def test_the_ctranslate2_translator_is_an_engine(ct2_engine) -> None:
    assert isinstance(ct2_engine, Engine)


def test_ctranslate2_phases_make_translate(ct2_engine, translators: dict) -> None:
    assert _by_phases(ct2_engine, SOURCES) == ct2_engine(SOURCES)
    # the same rows as the native engine, which it matches in float32
    assert ct2_engine.encode(SOURCES) == translators["transformer"].encode(SOURCES)


def test_ctranslate2_threads_get_the_sequential_outputs(ct2_engine) -> None:
    texts = [SOURCES[i:] + SOURCES[:i] for i in range(4)]
    expected = [ct2_engine(t) for t in texts]
    assert _in_threads(lambda i: ct2_engine(texts[i])) == expected


def test_finish_labels_attention_alike_in_both_engines(ct2_engine, translators: dict) -> None:
    native = translators["transformer"].translate(SOURCES[:1], attention=True)[0]
    ported = ct2_engine.translate(SOURCES[:1], attention=True)[0]
    assert ported.src_tokens == native.src_tokens and ported.src_tokens[-1] == "</s>"
    assert ported.attention.shape == (len(ported.out_tokens), len(ported.src_tokens))
    assert torch.allclose(ported.attention.sum(1), torch.ones(len(ported.out_tokens)), atol=1e-4)


def test_the_translator_cuts_sources_as_training_did(runs: dict) -> None:
    translator = Translator.from_run(runs["rnn"].path, device="cpu")
    cut = Translator(
        translator.base_model,
        translator.src_codec,
        translator.tgt_codec,
        translator.decode,
        cut=SourceCut(4),
    )
    assert [len(r) for r in cut.encode(["March 3, 2021", "1 a"])] == [4, 3]
    assert [len(r) for r in cut.configure(method="beam").encode(["March 3, 2021"])] == [4]
    assert len(translator.encode(["March 3, 2021"])[0]) == len("March 3, 2021")
