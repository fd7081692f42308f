"""Decoding features end to end: beam search and n-best lists, sampling, search rules,
ensembles, int8 and bf16 inference and forced scoring, through the Translator, the
Python API and the ``seq2seq`` command.

Two tiny runs (a GRU with attention and a Transformer) are trained once, in-process,
on the built-in ``reverse`` task with a word tokenizer, long enough (a few hundred
steps, ~15 s on one core) that most of their outputs are right: agreement checks
(int8 vs fp32, bf16 vs fp32) then mean something. Two more runs of one step each have
other vocabularies, for the ensemble checks. Every decode runs on the CPU; a few
checks at the end need CUDA and are skipped without it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from seq2seq.api import Seq2Seq
from seq2seq.cli import main
from seq2seq.data.tasks import make_task
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.inference import Translation, Translator
from seq2seq.search import Ensemble

ARCHS = {
    "rnn": ({"emb_dim": 32, "hidden_dim": 64}, 200),
    "transformer": (
        {
            "arch": "transformer",
            "hidden_dim": 64,
            "heads": 4,
            "ff_dim": 128,
            "enc_layers": 2,
            "dec_layers": 2,
            "max_positions": 64,
        },
        300,
    ),
}
MAX_LEN_A, MAX_LEN_B = 1.0, 4
SOURCES, TARGETS = make_task("reverse", "test", 40, 1)  # unseen by the runs (same task seed)
REPEATS = ["a b a b a b", "1 1 1 1", "x y z x y z", "k k k"]  # reversals repeat n-grams
WITH_A = ["a b c", "c a", "a", "q a z a", "a 1 a"]
SHORT = ["a b", "c", "9 z"]
CLI_SOURCES = ["a b c", "x 1 y", "q", "7 t t 2", "m n o p", "z"]


def _sections(model: dict, steps: int, **data) -> dict:
    return {
        "data": {"task": "reverse", "task_size": 2000, "tokenizer": "word", "max_len": 40, **data},
        "model": {"dropout": 0.0, **model},
        "train": {
            "seed": 1,
            "batch_tokens": 600,
            "lr": 3e-3,
            "label_smoothing": 0.0,
            "max_steps": steps,
            "valid_every": max(steps // 2, 1),
            "log_every": 100,
            "valid_bleu": False,
            "device": "cpu",
            "threads": 1,
        },
        "decode": {"max_len_a": MAX_LEN_A, "max_len_b": MAX_LEN_B},
    }


def _limit(source: str) -> int:
    """The output length limit (EOS included) of a source under the runs' decode rules."""
    return int((len(source.split()) + 1) * MAX_LEN_A + MAX_LEN_B)


def _texts(results: list[Translation]) -> list[str]:
    return [r.text for r in results]


def _agreement(a: list[str], b: list[str]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def _repeats(text: str, n: int) -> bool:
    tokens = text.split()
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def _plain_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained runs by architecture."""
    threads = torch.get_num_threads()  # fit() sets the process-wide thread count
    root = tmp_path_factory.mktemp("decoding")
    try:
        for name, (model, steps) in ARCHS.items():
            Seq2Seq(**_sections(model, steps)).fit(out=root / name)
    finally:
        torch.set_num_threads(threads)
    return {name: root / name for name in ARCHS}


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One-step runs with other target vocabularies: ``sort`` (another size) and
    ``reshuffled`` (the same pieces and size, in another frequency order)."""
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("foreign")
    model = ARCHS["rnn"][0]
    try:
        Seq2Seq(**_sections(model, 1, task="sort", task_size=200)).fit(out=root / "sort")
        Seq2Seq(**_sections(model, 1, task_seed=7, task_size=400)).fit(out=root / "reshuffled")
    finally:
        torch.set_num_threads(threads)
    return {"sort": root / "sort", "reshuffled": root / "reshuffled"}


@pytest.fixture(scope="module")
def translators(runs: dict[str, Path]) -> dict[str, Translator]:
    return {name: Translator.from_run(run, device="cpu") for name, run in runs.items()}


@pytest.fixture(scope="module")
def greedy_outputs(translators: dict[str, Translator]) -> dict[str, list[Translation]]:
    return {name: t.translate(SOURCES) for name, t in translators.items()}


@pytest.fixture(params=sorted(ARCHS))
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- the runs


def test_runs_learned_the_task(arch: str, greedy_outputs: dict) -> None:
    # The checks below compare decoders on these outputs: they must not be noise.
    accuracy = _agreement(_texts(greedy_outputs[arch]), TARGETS)
    assert accuracy >= 0.3, accuracy


# ---------------------------------------------------------------------------- beam search


def test_beam_nbest_sorted_and_distinct(arch: str, translators: dict) -> None:
    beam = translators[arch].configure(method="beam", beam_size=4, n_best=3)
    for result in beam.translate(SOURCES):
        assert len(result.nbest) == 3
        texts = [text for text, _ in result.nbest]
        scores = [score for _, score in result.nbest]
        assert len(set(texts)) == 3, texts
        assert scores == sorted(scores, reverse=True)
        assert all(math.isfinite(s) and s <= 0.0 for s in scores)
        assert (result.text, result.score) == result.nbest[0]


def test_beam_finds_at_least_greedy_score(arch: str, translators: dict, greedy_outputs) -> None:
    beam = translators[arch].configure(method="beam", beam_size=4, length_penalty=0.0)
    for b, g in zip(beam.translate(SOURCES), greedy_outputs[arch], strict=True):
        assert b.score >= g.score - 1e-4


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_of_one_is_greedy(arch: str, alpha: float, translators, greedy_outputs) -> None:
    beam = translators[arch].configure(method="beam", beam_size=1, length_penalty=alpha)
    assert _texts(beam.translate(SOURCES)) == _texts(greedy_outputs[arch])


def test_greedy_results_have_one_entry_nbest(arch: str, greedy_outputs: dict) -> None:
    for result in greedy_outputs[arch]:
        assert result.nbest == [(result.text, result.score)]


# ---------------------------------------------------------------------------- sampling


def test_sampling_is_reproducible_with_a_seed(arch: str, translators: dict) -> None:
    base = translators[arch]

    def draw(seed: int) -> list[str]:
        return base.configure(method="sample", seed=seed, temperature=3.0)(SOURCES)

    first = draw(1)
    assert draw(1) == first
    assert draw(2) != first
    assert len(first) == len(SOURCES) and all(isinstance(t, str) for t in first)


def test_sampling_stream_goes_on_across_calls(translators: dict) -> None:
    sampler = translators["rnn"].configure(method="sample", seed=5, temperature=3.0)
    first, second = sampler(SOURCES), sampler(SOURCES)
    assert first != second  # one stream per Translator, not one per call
    fresh = translators["rnn"].configure(method="sample", seed=5, temperature=3.0)
    assert [fresh(SOURCES), fresh(SOURCES)] == [first, second]


@pytest.mark.parametrize("truncation", [{"top_k": 1}, {"top_p": 1e-6}])
def test_truncated_sampling_is_greedy(
    arch: str, truncation: dict, translators: dict, greedy_outputs: dict
) -> None:
    sampler = translators[arch].configure(method="sample", temperature=5.0, seed=3, **truncation)
    sampled = sampler.translate(SOURCES)
    assert _texts(sampled) == _texts(greedy_outputs[arch])
    for s, g in zip(sampled, greedy_outputs[arch], strict=True):
        assert s.score == pytest.approx(g.score, abs=1e-4)  # model log-probs, not tempered


# ---------------------------------------------------------------------------- search rules

METHODS = [
    {"method": "greedy"},
    {"method": "beam", "beam_size": 3},
    {"method": "sample", "seed": 1, "temperature": 2.0},
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["method"])
def test_min_len_is_obeyed(arch: str, method: dict, translators: dict) -> None:
    base = translators[arch]
    assert any(len(t.split()) < 5 for t in base(SHORT))  # not vacuous
    for source, text in zip(SHORT, base.configure(min_len=5, **method)(SHORT), strict=True):
        assert 5 <= len(text.split()) <= _limit(source), (source, text)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["method"])
def test_no_repeat_ngram_is_obeyed(arch: str, method: dict, translators: dict) -> None:
    base = translators[arch]
    assert any(_repeats(t, 2) for t in base(REPEATS))  # not vacuous
    for n in (2, 3):
        for text in base.configure(no_repeat_ngram=n, **method)(REPEATS):
            assert text and not _repeats(text, n), (n, text)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["method"])
def test_banned_pieces_are_never_produced(arch: str, method: dict, translators: dict) -> None:
    base = translators[arch]
    assert any("a" in t.split() for t in base(WITH_A))  # not vacuous
    constrained = base.configure(banned=["a", "1"], **method)
    assert constrained.decode.banned == ("a", "1")
    for text in constrained(WITH_A):
        assert not {"a", "1"} & set(text.split()), text  # (may be empty: EOS is allowed)
    if method["method"] == "beam":
        for result in base.configure(banned=["a"], n_best=3, **method).translate(WITH_A):
            assert all("a" not in text.split() for text, _ in result.nbest)


def test_banned_piece_outside_the_vocabulary(runs: dict, translators: dict) -> None:
    with pytest.raises(ConfigError, match=r"decode\.banned.*'Z'"):
        translators["rnn"].configure(banned=["a", "Z"])
    with pytest.raises(ConfigError, match="'Zz'"):
        Translator.from_run(runs["rnn"], device="cpu", decode={"banned": ["Zz"]})


def test_configure_rejects_bad_settings(translators: dict) -> None:
    base = translators["rnn"]
    with pytest.raises(ConfigError, match=r"decode\.beam_sise.*did you mean 'beam_size'"):
        base.configure(beam_sise=3)
    with pytest.raises(ConfigError, match=r"decode\.nonsense"):
        base.configure(nonsense=1)
    with pytest.raises(ConfigError, match=r"decode\.temperature"):
        base.configure(method="sample", temperature=0.0)
    with pytest.raises(ConfigError, match=r"decode\.method"):
        base.configure(method="viterbi")
    with pytest.raises(ConfigError, match=r"n_best=3 exceeds decode\.beam_size=2"):
        base.configure(method="beam", beam_size=2, n_best=3)
    with pytest.raises(ConfigError, match=r"n_best=2 needs decode\.method: beam"):
        base.configure(n_best=2)


def test_configure_leaves_the_translator_alone(translators: dict, greedy_outputs) -> None:
    base = translators["rnn"]
    before = base.decode
    beam = base.configure(method="beam", beam_size=3)
    assert beam is not base and beam.decode.method == "beam" and beam.decode.beam_size == 3
    assert beam.base_model is base.base_model  # the same weights, not a copy
    assert base.decode == before
    assert base.configure() is base
    assert _texts(base.translate(SOURCES)) == _texts(greedy_outputs["rnn"])


def test_from_run_rejects_bad_decode_overrides(runs: dict) -> None:
    with pytest.raises(ConfigError, match=r"decode\.nonsense"):
        Translator.from_run(runs["rnn"], device="cpu", decode={"nonsense": 1})
    with pytest.raises(ConfigError, match="n_best"):
        Translator.from_run(runs["rnn"], device="cpu", decode={"method": "beam", "n_best": 9})
    with pytest.raises(ConfigError, match="no checkpoint"):
        Translator.from_run(runs["rnn"], [], device="cpu")


# ---------------------------------------------------------------------------- ensembles


def test_ensemble_of_one_checkpoint_twice_is_the_model(
    arch: str, runs: dict, greedy_outputs: dict
) -> None:
    twice = Translator.from_run(runs[arch], ["best", "best"], device="cpu")
    assert isinstance(twice.model, Ensemble) and len(twice.model.members) == 2
    results = twice.translate(SOURCES)
    assert _texts(results) == _texts(greedy_outputs[arch])
    for e, g in zip(results, greedy_outputs[arch], strict=True):
        assert e.score == pytest.approx(g.score, abs=1e-4)
    single = Translator.from_run(runs[arch], device="cpu", decode={"method": "beam"})
    beam_twice = twice.configure(method="beam")
    assert beam_twice(SOURCES) == single(SOURCES)


def test_ensemble_best_and_last(arch: str, runs: dict) -> None:
    ensemble = Translator.from_run(runs[arch], ["best", "last"], device="cpu")
    assert isinstance(ensemble.model, Ensemble)
    results = ensemble.configure(method="beam", beam_size=3, n_best=2).translate(SOURCES)
    assert len(results) == len(SOURCES)
    assert all(len(r.nbest) == 2 for r in results)
    assert _agreement(_texts(results), TARGETS) >= 0.3


def test_ensemble_of_two_architectures(runs: dict, greedy_outputs: dict) -> None:
    # Both runs saw the same training text, so their vocabularies are the same.
    mixed = Translator.from_run(runs["rnn"], ["best", str(runs["transformer"])], device="cpu")
    assert [type(m).__name__ for m in mixed.model.members] == [
        "RNNSeq2Seq",
        "TransformerSeq2Seq",
    ]
    results = mixed.translate(SOURCES, attention=True)
    assert _agreement(_texts(results), TARGETS) >= 0.3
    for r in results:
        assert tuple(r.attention.shape) == (len(r.out_tokens), len(r.src_tokens))
        assert torch.allclose(r.attention.sum(-1), torch.ones(len(r.out_tokens)), atol=1e-4)


def test_ensemble_rejects_another_vocabulary_by_directory(runs: dict, foreign: dict) -> None:
    for name in ("sort", "reshuffled"):
        with pytest.raises(CheckpointError, match=re.escape(str(foreign[name]))):
            Translator.from_run(runs["rnn"], ["best", str(foreign[name])], device="cpu")


def test_ensemble_rejects_a_checkpoint_file_of_another_size(runs: dict, foreign: dict) -> None:
    path = foreign["sort"] / "best.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        Translator.from_run(runs["rnn"], ["best", str(path)], device="cpu")


def test_ensemble_rejects_a_checkpoint_file_of_another_vocabulary(
    runs: dict, foreign: dict
) -> None:
    """A member given as a checkpoint file of another run whose vocabulary has the same
    size but other ids: decoding it with this run's vocabulary is silently wrong."""
    own = Translator.from_run(runs["rnn"], device="cpu").tgt_codec.vocab
    other = Translator.from_run(foreign["reshuffled"], device="cpu").tgt_codec.vocab
    assert len(own) == len(other) and own != other  # the premise: same size, other ids
    path = foreign["reshuffled"] / "best.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        Translator.from_run(runs["rnn"], ["best", str(path)], device="cpu")


# ---------------------------------------------------------------------------- int8 and bf16


def test_int8_quantizes_linears_and_agrees(
    arch: str, runs: dict, translators: dict, greedy_outputs: dict
) -> None:
    fp32 = translators[arch]
    weights = {k: v.clone() for k, v in fp32.model.state_dict().items()}
    linears = len(_plain_linears(fp32.model))
    assert linears > 0

    int8 = Translator.from_run(runs[arch], device="cpu", decode={"quantize": "int8"})
    assert not _plain_linears(int8.model)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, dynamic) for m in int8.model.modules()) == linears
    assert len(_plain_linears(int8.base_model)) == linears  # its fp32 model is kept
    outputs = int8(SOURCES)
    assert _agreement(outputs, _texts(greedy_outputs[arch])) >= 0.8

    # configure() quantizes a copy: the fp32 translator's model is left as it was.
    again = fp32.configure(quantize="int8")
    assert not _plain_linears(again.model)
    assert again(SOURCES) == outputs
    assert not _plain_linears(again.configure(method="beam", beam_size=3).model)
    assert len(_plain_linears(fp32.model)) == linears
    state = fp32.model.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert _texts(fp32.translate(SOURCES)) == _texts(greedy_outputs[arch])

    scores = again.score(SOURCES, outputs)
    assert all(math.isfinite(v) and v <= 0.0 for v, n in scores if n)


def test_bf16_agrees_with_fp32(
    arch: str, runs: dict, translators: dict, greedy_outputs: dict
) -> None:
    bf16 = Translator.from_run(runs[arch], device="cpu", decode={"precision": "bf16"})
    results = bf16.translate(SOURCES, attention=True)
    assert _agreement(_texts(results), _texts(greedy_outputs[arch])) >= 0.8
    for r in results:
        assert r.attention is not None and r.attention.dtype == torch.float32
    beam = bf16.configure(method="beam", beam_size=3)(SOURCES)
    assert _agreement(beam, TARGETS) >= 0.3
    fp32_scores = translators[arch].score(SOURCES, TARGETS)
    for (b, n), (f, m) in zip(bf16.score(SOURCES, TARGETS), fp32_scores, strict=True):
        assert n == m
        assert b == pytest.approx(f, abs=0.1 + 0.05 * abs(f))
    # The fp32 weights it was made from stay fp32 (bf16 may run on a copy).
    assert all(p.dtype == torch.float32 for p in bf16.base_model.parameters())
    assert all(p.dtype == torch.float32 for p in translators[arch].model.parameters())
    assert translators[arch].configure(precision="bf16")(SOURCES) == _texts(results)
    assert all(p.dtype == torch.float32 for p in translators[arch].model.parameters())


# ---------------------------------------------------------------------------- scoring


def test_score_is_the_greedy_log_prob(arch: str, translators: dict, greedy_outputs) -> None:
    translator = translators[arch]
    ended = [
        (s, r)
        for s, r in zip(SOURCES, greedy_outputs[arch], strict=True)
        if r.text and len(r.text.split()) < _limit(s)  # stopped by EOS, not by the limit
    ]
    assert len(ended) >= len(SOURCES) // 2
    scored = translator.score([s for s, _ in ended], [r.text for _, r in ended])
    for (_, result), (log_prob, count) in zip(ended, scored, strict=True):
        assert log_prob == pytest.approx(result.score, abs=1e-4)
        assert count == len(result.text.split()) + 1  # + EOS


def test_score_is_beam_log_prob_for_every_nbest_entry(arch: str, translators: dict) -> None:
    translator = translators[arch]
    beam = translator.configure(method="beam", beam_size=4, n_best=3, length_penalty=0.0)
    sources, targets, expected = [], [], []
    for source, result in zip(SOURCES[:12], beam.translate(SOURCES[:12]), strict=True):
        for text, score in result.nbest:
            if text and len(text.split()) < _limit(source):
                sources.append(source)
                targets.append(text)
                expected.append(score)
    assert len(expected) >= 12
    got = [value for value, _ in translator.score(sources, targets)]
    assert got == pytest.approx(expected, abs=1e-4)


def test_score_empty_sides_counts_and_batching(translators: dict) -> None:
    translator = translators["rnn"]
    sources = ["a b", "", "a b", "x y z", "   "]
    targets = ["", "b a", "b a", "z y x", "q"]
    scored = translator.score(sources, targets)
    for i in (0, 1, 4):
        assert math.isnan(scored[i][0]) and scored[i][1] == 0
    assert [n for _, n in scored] == [0, 0, 3, 4, 0]
    assert all(v <= 0.0 for v, n in scored if n)
    alone = [translator.score([s], [t])[0] for s, t in zip(sources, targets, strict=True)]
    for (a, n), (b, m) in zip(alone, scored, strict=True):
        assert n == m and (math.isnan(a) and math.isnan(b) or a == pytest.approx(b, abs=1e-4))
    assert translator.score([], []) == []


def test_score_prefers_the_right_target(arch: str, translators: dict) -> None:
    # A trained model gives the reversal more probability than the unreversed source.
    right = translators[arch].score(SOURCES, TARGETS)
    wrong = translators[arch].score(SOURCES, SOURCES)
    better = [
        r > w for (r, _), (w, _), s in zip(right, wrong, SOURCES, strict=True) if s != s[::-1]
    ]
    assert sum(better) >= 0.8 * len(better)


def test_score_of_an_ensemble_of_one_model_twice(arch: str, runs: dict, translators) -> None:
    twice = Translator.from_run(runs[arch], ["best", "best"], device="cpu")
    single = translators[arch].score(SOURCES, TARGETS)
    for (a, n), (b, m) in zip(twice.score(SOURCES, TARGETS), single, strict=True):
        assert n == m and a == pytest.approx(b, abs=1e-4)


# ---------------------------------------------------------------------------- Python API


@pytest.fixture(scope="module")
def api_models(runs: dict) -> dict[str, Seq2Seq]:
    return {name: Seq2Seq.load(run, device="cpu") for name, run in runs.items()}


def test_api_predict_overrides_are_per_call(api_models: dict, greedy_outputs: dict) -> None:
    model = api_models["rnn"]
    greedy = _texts(greedy_outputs["rnn"])
    assert model.predict(SOURCES) == greedy
    beam = model.predict(SOURCES, method="beam", beam_size=3)
    assert len(beam) == len(SOURCES) and all(isinstance(t, str) for t in beam)
    assert _agreement(beam, TARGETS) >= 0.3
    assert model.translator.decode.method == "greedy"
    assert model.config.decode.method == "greedy"
    assert model.predict(SOURCES) == greedy  # a later plain call is greedy again
    assert model.predict(SOURCES, method="beam", beam_size=1) == greedy
    sampled = model.predict(iter(SOURCES), method="sample", seed=4, temperature=3.0)
    assert model.predict(SOURCES, method="sample", seed=4, temperature=3.0) == sampled
    assert model.predict(SOURCES, quantize="int8") == model.translator.configure(quantize="int8")(
        SOURCES
    )
    assert model.predict(SOURCES) == greedy
    with pytest.raises(ConfigError, match=r"decode\.beam_sise"):
        model.predict(SOURCES, beam_sise=3)


def test_api_translate_with_attention_and_beam(arch: str, api_models: dict) -> None:
    sources = [*SOURCES[:10], "", "a"]
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
    assert [r.nbest for r in plain] == [r.nbest for r in results]
    assert all(r.attention is None for r in plain)


def test_api_translate_with_attention_and_sampling(api_models: dict) -> None:
    results = api_models["transformer"].translate(
        SOURCES[:8], attention=True, method="sample", seed=2, temperature=2.0
    )
    for r in results:
        assert tuple(r.attention.shape) == (len(r.out_tokens), len(r.src_tokens))
        assert torch.allclose(r.attention.sum(-1), torch.ones(len(r.out_tokens)), atol=1e-4)


def test_api_score(api_models: dict, translators: dict) -> None:
    values = api_models["rnn"].score(SOURCES, iter(TARGETS))
    assert len(values) == len(SOURCES) and all(isinstance(v, float) for v in values)
    expected = [v for v, _ in translators["rnn"].score(SOURCES, TARGETS)]
    assert values == pytest.approx(expected, abs=1e-5)
    assert math.isnan(api_models["rnn"].score(["a b"], [""])[0])


# ---------------------------------------------------------------------------- command line

MOSES = re.compile(r"(\d+) \|\|\| (.*) \|\|\| (-?\d+\.\d{4})")


def _argv(argv: list) -> list[str]:
    """The arguments as strings, on the CPU unless a device is named (as the checks
    compare with CPU decodes, also on a machine with CUDA)."""
    return [str(a) for a in argv] + ([] if "--device" in argv else ["--device", "cpu"])


def _run(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``seq2seq ARGV`` in-process: (exit status, stdout, stderr)."""
    code = main(_argv(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _ok(argv: list, capsys: pytest.CaptureFixture) -> list[str]:
    code, out, err = _run(argv, capsys)
    assert code == 0, err
    assert "Traceback" not in err
    return out.split("\n")[:-1]


def _fails(argv: list, capsys: pytest.CaptureFixture) -> str:
    """Run a command that must fail as a user error; return its one-line message."""
    try:
        code = main(_argv(argv))
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1, err
    return errors[0]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture()
def src_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "in.txt", CLI_SOURCES)


def test_cli_nbest_moses_format(
    runs: dict, src_file: Path, tmp_path: Path, translators: dict, capsys
) -> None:
    lines = _ok(["translate", runs["rnn"], "-i", src_file, "--beam", "3", "--nbest", "2"], capsys)
    assert len(lines) == 2 * len(CLI_SOURCES)
    parsed = [MOSES.fullmatch(line) for line in lines]
    assert all(parsed), lines
    indices = [int(m.group(1)) for m in parsed]
    assert indices == [i for i in range(len(CLI_SOURCES)) for _ in range(2)]
    expected = translators["rnn"].configure(method="beam", beam_size=3, n_best=2)
    for i, result in enumerate(expected.translate(CLI_SOURCES)):
        pair = parsed[2 * i : 2 * i + 2]
        assert [m.group(2) for m in pair] == [text for text, _ in result.nbest]
        scores = [float(m.group(3)) for m in pair]
        assert scores == sorted(scores, reverse=True)
        assert scores == pytest.approx([s for _, s in result.nbest], abs=1e-4)
    # --nbest alone implies beam search; -o writes the same lines.
    out = tmp_path / "nbest.txt"
    assert _ok(["translate", runs["rnn"], "-i", src_file, "--nbest", "3", "-o", out], capsys) == []
    written = out.read_text(encoding="utf-8").splitlines()
    assert len(written) == 3 * len(CLI_SOURCES) and all(MOSES.fullmatch(w) for w in written)


def test_cli_beam_without_nbest_prints_plain_lines(runs: dict, src_file: Path, capsys) -> None:
    lines = _ok(["translate", runs["rnn"], "-i", src_file, "--beam", "3"], capsys)
    assert len(lines) == len(CLI_SOURCES) and not any("|||" in line for line in lines)


def test_cli_sampling_with_a_seed(runs: dict, src_file: Path, translators: dict, capsys) -> None:
    argv = ["translate", runs["rnn"], "-i", src_file, "--sample", "-d", "temperature=3"]
    first = _ok([*argv, "--seed", "1"], capsys)
    assert _ok([*argv, "--seed", "1"], capsys) == first
    assert len(first) == len(CLI_SOURCES)
    sampler = translators["rnn"].configure(method="sample", seed=1, temperature=3.0)
    assert sampler(CLI_SOURCES) == first
    many = _write(src_file.parent / "many.txt", SOURCES)
    argv[3] = many
    assert _ok([*argv, "--seed", "1"], capsys) != _ok([*argv, "--seed", "2"], capsys)


def test_cli_decode_settings(runs: dict, src_file: Path, capsys) -> None:
    argv = ["translate", runs["rnn"], "-i", src_file]
    lines = _ok(
        [*argv, "--sample", "--seed", "3", "-d", "top_p=0.9", "-d", "temperature=0.8"], capsys
    )
    assert len(lines) == len(CLI_SOURCES)
    lines = _ok([*argv, "--beam", "3", "-d", "banned=[a, b]", "-d", "min_len=2"], capsys)
    assert len(lines) == len(CLI_SOURCES)
    for line in lines:
        assert len(line.split()) >= 2 and not {"a", "b"} & set(line.split()), line
    lines = _ok([*argv, "-d", "no_repeat_ngram=1", "-d", "length_penalty=0.6"], capsys)
    assert all(len(set(line.split())) == len(line.split()) for line in lines)


def test_cli_decode_errors(runs: dict, src_file: Path, capsys) -> None:
    argv = ["translate", runs["rnn"], "-i", src_file]
    message = _fails([*argv, "-d", "nonsense=1"], capsys)
    assert message.startswith("seq2seq translate: error: ") and "decode.nonsense" in message
    assert "beam_size" in _fails([*argv, "-d", "beam_size"], capsys)
    assert "key=value" in _fails([*argv, "-d", "=3"], capsys)
    assert "decode.temperature" in _fails([*argv, "--sample", "-d", "temperature=0"], capsys)
    assert "n_best" in _fails([*argv, "--beam", "2", "--nbest", "3"], capsys)
    assert "'Z'" in _fails([*argv, "-d", "banned=[Z]"], capsys)
    assert "--beam" in _fails([*argv, "--beam", "0"], capsys)
    assert "excludes --beam" in _fails([*argv, "--sample", "--beam", "3"], capsys)
    assert "exclude each other" in _fails(
        [*argv, "--quantize", "int8", "--precision", "bf16"], capsys
    )
    assert "cannot be banned" in _fails([*argv, "-d", "banned=['</s>']"], capsys)
    message = _fails(
        ["evaluate", runs["rnn"], "--src", src_file, "--ref", src_file, "-d", "x=1"], capsys
    )
    assert message.startswith("seq2seq evaluate: error: ") and "decode.x" in message


def test_cli_ensemble_checkpoints(
    runs: dict, foreign: dict, src_file: Path, translators: dict, capsys
) -> None:
    argv = ["translate", runs["rnn"], "-i", src_file]
    single = _ok(argv, capsys)
    assert single == translators["rnn"](CLI_SOURCES)
    assert _ok([*argv, "--checkpoint", "best", "--checkpoint", "best"], capsys) == single
    assert len(_ok([*argv, "--checkpoint", "best", "--checkpoint", "last"], capsys)) == len(single)
    mixed = [*argv, "--checkpoint", "best", "--checkpoint", runs["transformer"], "--beam", "2"]
    assert len(_ok(mixed, capsys)) == len(single)
    message = _fails([*argv, "--checkpoint", "best", "--checkpoint", foreign["sort"]], capsys)
    assert str(foreign["sort"]) in message


def test_cli_attention_with_beam(runs: dict, src_file: Path, tmp_path: Path, capsys) -> None:
    plots = tmp_path / "plots"
    argv = ["translate", runs["transformer"], "-i", src_file, "--attention", plots, "--beam", "3"]
    assert len(_ok(argv, capsys)) == len(CLI_SOURCES)
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(len(CLI_SOURCES))]
    assert all((plots / n).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for n in pngs)


def test_cli_evaluate_with_beam(runs: dict, tmp_path: Path, translators: dict, capsys) -> None:
    src, ref = _write(tmp_path / "t.src", SOURCES), _write(tmp_path / "t.ref", TARGETS)
    hyps = tmp_path / "hyps.txt"
    argv = ["evaluate", runs["rnn"], "--src", src, "--ref", ref, "--beam", "3", "--json"]
    scores = json.loads("\n".join(_ok([*argv, "--hyp-out", hyps], capsys)))
    assert {"bleu", "chrf"} <= set(scores)
    assert 30.0 <= scores["bleu"] <= 100.0
    beam = translators["rnn"].configure(method="beam", beam_size=3)
    assert hyps.read_text(encoding="utf-8").splitlines() == beam(SOURCES)
    sampled = json.loads("\n".join(_ok([*argv[:-3], "--sample", "--seed", "1", "--json"], capsys)))
    assert 0.0 <= sampled["bleu"] <= 100.0


def test_cli_score(runs: dict, tmp_path: Path, translators: dict, capsys) -> None:
    sources, targets = [*SOURCES[:8], "a b"], [*TARGETS[:8], ""]
    src, tgt = _write(tmp_path / "s.src", sources), _write(tmp_path / "s.tgt", targets)
    lines = _ok(["score", runs["rnn"], "--src", src, "--tgt", tgt], capsys)
    assert len(lines) == len(sources)
    expected = translators["rnn"].score(sources, targets)
    for line, target, (value, count) in zip(lines[:-1], targets[:-1], expected[:-1], strict=True):
        log_prob, tokens, per_token = line.split("\t")
        assert float(log_prob) <= 0.0
        assert int(tokens) == count == len(target.split()) + 1
        assert float(log_prob) == pytest.approx(value, abs=1e-3)
        assert float(per_token) == pytest.approx(float(log_prob) / int(tokens), abs=1e-3)
    assert lines[-1] == "nan\t0\tnan"
    out = tmp_path / "scores.txt"
    assert _ok(["score", runs["rnn"], "--src", src, "--tgt", tgt, "-o", out], capsys) == []
    assert out.read_text(encoding="utf-8").splitlines() == lines
    twice = ["--checkpoint", "best", "--checkpoint", "best"]
    ensemble = _ok(["score", runs["rnn"], "--src", src, "--tgt", tgt, *twice], capsys)
    for a, b in zip(ensemble[:-1], lines[:-1], strict=True):
        assert float(a.split("\t")[0]) == pytest.approx(float(b.split("\t")[0]), abs=2e-4)


def test_cli_score_mismatched_files(runs: dict, tmp_path: Path, capsys) -> None:
    src = _write(tmp_path / "three.src", ["a", "b", "c"])
    tgt = _write(tmp_path / "two.tgt", ["a", "b"])
    message = _fails(["score", runs["rnn"], "--src", src, "--tgt", tgt], capsys)
    assert message.startswith("seq2seq score: error: ")
    assert str(src) in message and str(tgt) in message
    assert "3" in message and "2" in message


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_cli_int8_and_bf16(name: str, runs: dict, src_file: Path, tmp_path: Path, capsys) -> None:
    argv = ["translate", runs[name], "-i", src_file, "--device", "cpu"]
    fp32 = _ok(argv, capsys)
    many = _write(tmp_path / "many.txt", SOURCES)
    int8 = _ok([*argv, "--quantize", "int8"], capsys)
    assert len(int8) == len(CLI_SOURCES)
    argv[3] = many
    assert _agreement(_ok([*argv, "--quantize", "int8"], capsys), _ok(argv, capsys)) >= 0.8
    assert _agreement(_ok([*argv, "--precision", "bf16"], capsys), _ok(argv, capsys)) >= 0.8
    assert len(_ok([*argv, "--quantize", "int8", "--beam", "3", "--nbest", "2"], capsys)) == 80
    assert len(fp32) == len(CLI_SOURCES)
    tgt = _write(tmp_path / "many.tgt", TARGETS)
    base = ["score", runs[name], "--src", many, "--tgt", tgt, "--device", "cpu"]
    for extra in (["--quantize", "int8"], ["--precision", "bf16"]):
        lines = _ok([*base, *extra], capsys)
        assert len(lines) == len(SOURCES)
        assert all(float(line.split("\t")[0]) <= 0.0 for line in lines)


# ---------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_int8_is_refused(runs: dict, src_file: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="int8"):
        Translator.from_run(runs["rnn"], device="cuda", decode={"quantize": "int8"})
    argv = ["translate", runs["rnn"], "-i", src_file, "--device", "cuda", "--quantize", "int8"]
    assert "int8" in _fails(argv, capsys)


@cuda
def test_cuda_configure_int8_leaves_the_gpu_model_alone(runs: dict) -> None:
    # Translator's docstring: int8 asked for on a GPU is a ConfigError; either way the
    # fp32 model the translator holds must stay where it is.
    translator = Translator.from_run(runs["rnn"], device="cuda")
    before = translator(SOURCES)
    try:
        translator.configure(quantize="int8")
    except ConfigError:
        pass
    assert next(translator.base_model.parameters()).device.type == "cuda"
    assert translator.device.type == "cuda"
    assert translator(SOURCES) == before
    with pytest.raises(ConfigError, match="int8"):
        translator.configure(quantize="int8")


@cuda
def test_cuda_decoding_matches_cpu(arch: str, runs: dict, greedy_outputs: dict) -> None:
    gpu = Translator.from_run(runs[arch], device="cuda")
    assert _agreement(gpu(SOURCES), _texts(greedy_outputs[arch])) >= 0.9
    bf16 = gpu.configure(precision="bf16")
    assert _agreement(bf16(SOURCES), _texts(greedy_outputs[arch])) >= 0.8
    sampler = {"method": "sample", "seed": 1, "temperature": 3.0}
    assert gpu.configure(**sampler)(SOURCES) == gpu.configure(**sampler)(SOURCES)
    beam = gpu.configure(method="beam", beam_size=4, n_best=3).translate(SOURCES, attention=True)
    assert all(len(r.nbest) == 3 for r in beam)
    ensemble = Translator.from_run(runs[arch], ["best", "last"], device="cuda")
    assert len(ensemble(SOURCES)) == len(SOURCES)
    scores = gpu.score(SOURCES, TARGETS)
    expected = Translator.from_run(runs[arch], device="cpu").score(SOURCES, TARGETS)
    for (a, n), (b, m) in zip(scores, expected, strict=True):
        assert n == m and a == pytest.approx(b, rel=1e-2, abs=1e-2)  # TF32 on the GPU


def test_save_after_int8_or_bf16_keeps_the_trained_weights(runs: dict, tmp_path: Path) -> None:
    model = Seq2Seq.load(runs["transformer"], device="cpu")
    plain = model.translator
    trained = {k: v.clone() for k, v in plain.base_model.state_dict().items()}
    for decode in ({"quantize": "int8"}, {"precision": "bf16"}):
        model.translator = plain.configure(**decode)
        saved = Seq2Seq.load(model.save(tmp_path / decode.popitem()[0]), device="cpu")
        weights = saved.translator.model.state_dict()
        assert all(torch.equal(weights[k], v) for k, v in trained.items())


def test_configure_makes_the_int8_copy_once(translators: dict) -> None:
    int8 = translators["rnn"].configure(quantize="int8")
    assert int8.configure(method="beam", beam_size=2).model is int8.model
    assert int8.configure(quantize="none").model is translators["rnn"].model


def test_score_of_a_target_longer_than_the_model_is_nan(runs: dict, caplog) -> None:
    translator = Translator.from_run(runs["transformer"], device="cpu")
    limit = translator.model.max_positions
    long = " ".join(["a"] * (limit + 5))
    scores = translator.score([SOURCES[0], SOURCES[0]], [long, SOURCES[0]])
    assert math.isnan(scores[0][0]) and scores[0][1] == 0
    assert math.isfinite(scores[1][0])
    assert "exceed the model" in caplog.text
