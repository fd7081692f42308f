"""The native Translator: search settings and rules, sampling, ensembles, int8 and bf16
inference, forced scoring and configure().

Every check runs on the trained ``reverse`` runs of tests/conftest.py (a GRU with
attention and a Transformer; two one-step runs with other vocabularies for ensembles).
Every decode runs on the CPU; a few checks at the end need CUDA and are skipped without
it. The search functions themselves (on untrained models) are tested in test_search.py.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.inference import Translator
from seq2seq.search import Ensemble
from tests.conftest import (
    MAX_LEN_A,
    MAX_LEN_B,
    REVERSE_SOURCES,
    REVERSE_TARGETS,
    agreement,
    texts_of,
)

SOURCES, TARGETS = REVERSE_SOURCES, REVERSE_TARGETS  # held out from the runs' training

REPEATS = ["a b a b a b", "1 1 1 1", "x y z x y z", "k k k"]  # reversals repeat n-grams
WITH_A = ["a b c", "c a", "a", "q a z a", "a 1 a"]
SHORT = ["a b", "c", "9 z"]


def _limit(source: str) -> int:
    """The output length limit (EOS included) of a source under the runs' decode rules."""
    return int((len(source.split()) + 1) * MAX_LEN_A + MAX_LEN_B)


def _repeats(text: str, n: int) -> bool:
    tokens = text.split()
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def _plain_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


# ---------------------------------------------------------------------------- the runs


def test_runs_learned_the_task(arch: str, greedy_outputs: dict) -> None:
    # The checks below compare decoders on these outputs: they must not be noise.
    accuracy = agreement(texts_of(greedy_outputs[arch]), TARGETS)
    assert accuracy >= 0.3, accuracy


# ---------------------------------------------------------------------------- beam search


def test_beam_nbest_sorted_and_distinct(arch: str, reverse_translators: dict) -> None:
    beam = reverse_translators[arch].configure(method="beam", beam_size=4, n_best=3)
    for result in beam.translate(SOURCES):
        assert len(result.nbest) == 3
        texts = [text for text, _ in result.nbest]
        scores = [score for _, score in result.nbest]
        assert len(set(texts)) == 3, texts
        assert scores == sorted(scores, reverse=True)
        assert all(math.isfinite(s) and s <= 0.0 for s in scores)
        assert (result.text, result.score) == result.nbest[0]


def test_beam_finds_at_least_greedy_score(
    arch: str, reverse_translators: dict, greedy_outputs
) -> None:
    beam = reverse_translators[arch].configure(method="beam", beam_size=4, length_penalty=0.0)
    for b, g in zip(beam.translate(SOURCES), greedy_outputs[arch], strict=True):
        assert b.score >= g.score - 1e-4


def test_greedy_results_have_one_entry_nbest(arch: str, greedy_outputs: dict) -> None:
    for result in greedy_outputs[arch]:
        assert result.nbest == [(result.text, result.score)]


# ---------------------------------------------------------------------------- sampling


def test_sampling_is_reproducible_with_a_seed(arch: str, reverse_translators: dict) -> None:
    base = reverse_translators[arch]

    def draw(seed: int) -> list[str]:
        return base.configure(method="sample", seed=seed, temperature=3.0)(SOURCES)

    first = draw(1)
    assert draw(1) == first
    assert draw(2) != first
    assert len(first) == len(SOURCES) and all(isinstance(t, str) for t in first)


def test_sampling_stream_goes_on_across_calls(reverse_translators: dict) -> None:
    sampler = reverse_translators["rnn"].configure(method="sample", seed=5, temperature=3.0)
    first, second = sampler(SOURCES), sampler(SOURCES)
    assert first != second  # one stream per Translator, not one per call
    fresh = reverse_translators["rnn"].configure(method="sample", seed=5, temperature=3.0)
    assert [fresh(SOURCES), fresh(SOURCES)] == [first, second]


@pytest.mark.parametrize("truncation", [{"top_k": 1}, {"top_p": 1e-6}])
def test_truncated_sampling_is_greedy(
    arch: str, truncation: dict, reverse_translators: dict, greedy_outputs: dict
) -> None:
    sampler = reverse_translators[arch].configure(
        method="sample", temperature=5.0, seed=3, **truncation
    )
    sampled = sampler.translate(SOURCES)
    assert texts_of(sampled) == texts_of(greedy_outputs[arch])
    for s, g in zip(sampled, greedy_outputs[arch], strict=True):
        assert s.score == pytest.approx(g.score, abs=1e-4)  # model log-probs, not tempered


# ---------------------------------------------------------------------------- search rules

METHODS = [
    {"method": "greedy"},
    {"method": "beam", "beam_size": 3},
    {"method": "sample", "seed": 1, "temperature": 2.0},
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["method"])
def test_min_len_is_obeyed(arch: str, method: dict, reverse_translators: dict) -> None:
    base = reverse_translators[arch]
    assert any(len(t.split()) < 5 for t in base(SHORT))  # not vacuous
    for source, text in zip(SHORT, base.configure(min_len=5, **method)(SHORT), strict=True):
        assert 5 <= len(text.split()) <= _limit(source), (source, text)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["method"])
def test_no_repeat_ngram_is_obeyed(arch: str, method: dict, reverse_translators: dict) -> None:
    base = reverse_translators[arch]
    assert any(_repeats(t, 2) for t in base(REPEATS))  # not vacuous
    for n in (2, 3):
        for text in base.configure(no_repeat_ngram=n, **method)(REPEATS):
            assert text and not _repeats(text, n), (n, text)


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m["method"])
def test_banned_pieces_are_never_produced(
    arch: str, method: dict, reverse_translators: dict
) -> None:
    base = reverse_translators[arch]
    assert any("a" in t.split() for t in base(WITH_A))  # not vacuous
    constrained = base.configure(banned=["a", "1"], **method)
    assert constrained.decode.banned == ("a", "1")
    for text in constrained(WITH_A):
        assert not {"a", "1"} & set(text.split()), text  # (may be empty: EOS is allowed)
    if method["method"] == "beam":
        for result in base.configure(banned=["a"], n_best=3, **method).translate(WITH_A):
            assert all("a" not in text.split() for text, _ in result.nbest)


def test_banned_piece_outside_the_vocabulary(reverse_runs: dict, reverse_translators: dict) -> None:
    with pytest.raises(ConfigError, match=r"decode\.banned.*'Z'"):
        reverse_translators["rnn"].configure(banned=["a", "Z"])
    with pytest.raises(ConfigError, match="'Zz'"):
        Translator.from_run(reverse_runs["rnn"], device="cpu", decode={"banned": ["Zz"]})


def test_configure_rejects_bad_settings(reverse_translators: dict) -> None:
    base = reverse_translators["rnn"]
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


def test_configure_leaves_the_translator_alone(reverse_translators: dict, greedy_outputs) -> None:
    base = reverse_translators["rnn"]
    before = base.decode
    beam = base.configure(method="beam", beam_size=3)
    assert beam is not base and beam.decode.method == "beam" and beam.decode.beam_size == 3
    assert beam.base_model is base.base_model  # the same weights, not a copy
    assert base.decode == before
    assert base.configure() is base
    assert texts_of(base.translate(SOURCES)) == texts_of(greedy_outputs["rnn"])


def test_from_run_rejects_bad_decode_overrides(reverse_runs: dict) -> None:
    with pytest.raises(ConfigError, match=r"decode\.nonsense"):
        Translator.from_run(reverse_runs["rnn"], device="cpu", decode={"nonsense": 1})
    with pytest.raises(ConfigError, match="n_best"):
        Translator.from_run(
            reverse_runs["rnn"], device="cpu", decode={"method": "beam", "n_best": 9}
        )
    with pytest.raises(ConfigError, match="no checkpoint"):
        Translator.from_run(reverse_runs["rnn"], [], device="cpu")


# ---------------------------------------------------------------------------- ensembles


def test_ensemble_of_one_checkpoint_twice_is_the_model(
    arch: str, reverse_runs: dict, greedy_outputs: dict
) -> None:
    twice = Translator.from_run(reverse_runs[arch], ["best", "best"], device="cpu")
    assert isinstance(twice.model, Ensemble) and len(twice.model.members) == 2
    results = twice.translate(SOURCES)
    assert texts_of(results) == texts_of(greedy_outputs[arch])
    for e, g in zip(results, greedy_outputs[arch], strict=True):
        assert e.score == pytest.approx(g.score, abs=1e-4)
    single = Translator.from_run(reverse_runs[arch], device="cpu", decode={"method": "beam"})
    beam_twice = twice.configure(method="beam")
    assert beam_twice(SOURCES) == single(SOURCES)


def test_ensemble_best_and_last(arch: str, reverse_runs: dict) -> None:
    ensemble = Translator.from_run(reverse_runs[arch], ["best", "last"], device="cpu")
    assert isinstance(ensemble.model, Ensemble)
    results = ensemble.configure(method="beam", beam_size=3, n_best=2).translate(SOURCES)
    assert len(results) == len(SOURCES)
    assert all(len(r.nbest) == 2 for r in results)
    assert agreement(texts_of(results), TARGETS) >= 0.3


def test_ensemble_of_two_architectures(reverse_runs: dict, greedy_outputs: dict) -> None:
    # Both runs saw the same training text, so their vocabularies are the same.
    mixed = Translator.from_run(
        reverse_runs["rnn"], ["best", str(reverse_runs["transformer"])], device="cpu"
    )
    assert [type(m).__name__ for m in mixed.model.members] == [
        "RNNSeq2Seq",
        "TransformerSeq2Seq",
    ]
    results = mixed.translate(SOURCES, attention=True)
    assert agreement(texts_of(results), TARGETS) >= 0.3
    for r in results:
        assert tuple(r.attention.shape) == (len(r.out_tokens), len(r.src_tokens))
        assert torch.allclose(r.attention.sum(-1), torch.ones(len(r.out_tokens)), atol=1e-4)


def test_ensemble_rejects_another_vocabulary_by_directory(
    reverse_runs: dict, foreign_runs: dict
) -> None:
    for name in ("sort", "reshuffled"):
        with pytest.raises(CheckpointError, match=re.escape(str(foreign_runs[name]))):
            Translator.from_run(
                reverse_runs["rnn"], ["best", str(foreign_runs[name])], device="cpu"
            )


def test_ensemble_rejects_a_checkpoint_file_of_another_size(
    reverse_runs: dict, foreign_runs: dict
) -> None:
    path = foreign_runs["sort"] / "best.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        Translator.from_run(reverse_runs["rnn"], ["best", str(path)], device="cpu")


def test_ensemble_rejects_a_checkpoint_file_of_another_vocabulary(
    reverse_runs: dict, foreign_runs: dict
) -> None:
    """A member given as a checkpoint file of another run whose vocabulary has the same
    size but other ids: decoding it with this run's vocabulary is silently wrong."""
    own = Translator.from_run(reverse_runs["rnn"], device="cpu").tgt_codec.vocab
    other = Translator.from_run(foreign_runs["reshuffled"], device="cpu").tgt_codec.vocab
    assert len(own) == len(other) and own != other  # the premise: same size, other ids
    path = foreign_runs["reshuffled"] / "best.safetensors"
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        Translator.from_run(reverse_runs["rnn"], ["best", str(path)], device="cpu")


# ---------------------------------------------------------------------------- int8 and bf16


def test_int8_quantizes_linears_and_agrees(
    arch: str, reverse_runs: dict, reverse_translators: dict, greedy_outputs: dict
) -> None:
    fp32 = reverse_translators[arch]
    weights = {k: v.clone() for k, v in fp32.model.state_dict().items()}
    linears = len(_plain_linears(fp32.model))
    assert linears > 0

    int8 = Translator.from_run(reverse_runs[arch], device="cpu", decode={"quantize": "int8"})
    assert not _plain_linears(int8.model)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, dynamic) for m in int8.model.modules()) == linears
    assert len(_plain_linears(int8.base_model)) == linears  # its fp32 model is kept
    outputs = int8(SOURCES)
    assert agreement(outputs, texts_of(greedy_outputs[arch])) >= 0.8

    # configure() quantizes a copy: the fp32 translator's model is left as it was.
    again = fp32.configure(quantize="int8")
    assert not _plain_linears(again.model)
    assert again(SOURCES) == outputs
    assert not _plain_linears(again.configure(method="beam", beam_size=3).model)
    assert len(_plain_linears(fp32.model)) == linears
    state = fp32.model.state_dict()
    assert state.keys() == weights.keys()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert texts_of(fp32.translate(SOURCES)) == texts_of(greedy_outputs[arch])

    scores = again.score(SOURCES, outputs)
    assert all(math.isfinite(v) and v <= 0.0 for v, n in scores if n)


def test_bf16_agrees_with_fp32(
    arch: str, reverse_runs: dict, reverse_translators: dict, greedy_outputs: dict
) -> None:
    bf16 = Translator.from_run(reverse_runs[arch], device="cpu", decode={"precision": "bf16"})
    results = bf16.translate(SOURCES, attention=True)
    assert agreement(texts_of(results), texts_of(greedy_outputs[arch])) >= 0.8
    for r in results:
        assert r.attention is not None and r.attention.dtype == torch.float32
    beam = bf16.configure(method="beam", beam_size=3)(SOURCES)
    assert agreement(beam, TARGETS) >= 0.3
    fp32_scores = reverse_translators[arch].score(SOURCES, TARGETS)
    for (b, n), (f, m) in zip(bf16.score(SOURCES, TARGETS), fp32_scores, strict=True):
        assert n == m
        assert b == pytest.approx(f, abs=0.1 + 0.05 * abs(f))
    # The fp32 weights it was made from stay fp32 (bf16 may run on a copy).
    assert all(p.dtype == torch.float32 for p in bf16.base_model.parameters())
    assert all(p.dtype == torch.float32 for p in reverse_translators[arch].model.parameters())
    configured = reverse_translators[arch].configure(precision="bf16")
    assert texts_of(configured.translate(SOURCES, attention=True)) == texts_of(results)
    assert all(p.dtype == torch.float32 for p in reverse_translators[arch].model.parameters())


def test_int8_fuses_the_feed_forward_relu_with_the_same_outputs() -> None:
    """Each Transformer feed-forward's ReLU runs inside its quantized product; the
    outputs equal quantizing without the fusion, and the fp32 model is left alone."""
    from seq2seq.data.batching import collate
    from seq2seq.inference.compress import quantize_int8
    from tests.conftest import random_examples, tiny_transformer

    model = tiny_transformer().eval()
    fused = quantize_int8(model)
    layers = [*fused.encoder, *fused.decoder]
    relu = torch.ao.nn.intrinsic.quantized.dynamic.LinearReLU
    assert all(isinstance(layer.ff.inner, relu) for layer in layers)
    assert all(isinstance(layer.ff.act, torch.nn.ReLU) for layer in [*model.encoder])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, torch.qint8)
    batch = collate(random_examples(4), list(range(4)))
    with torch.no_grad():
        assert torch.equal(fused(batch.src, batch.tgt_in), plain(batch.src, batch.tgt_in))


def test_configure_makes_the_int8_copy_once(reverse_translators: dict) -> None:
    int8 = reverse_translators["rnn"].configure(quantize="int8")
    assert int8.configure(method="beam", beam_size=2).model is int8.model
    assert int8.configure(quantize="none").model is reverse_translators["rnn"].model


# ---------------------------------------------------------------------------- scoring


def test_score_is_the_greedy_log_prob(arch: str, reverse_translators: dict, greedy_outputs) -> None:
    translator = reverse_translators[arch]
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


def test_score_is_beam_log_prob_for_every_nbest_entry(arch: str, reverse_translators: dict) -> None:
    translator = reverse_translators[arch]
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


def test_score_empty_sides_counts_and_batching(reverse_translators: dict) -> None:
    translator = reverse_translators["rnn"]
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


def test_score_prefers_the_right_target(arch: str, reverse_translators: dict) -> None:
    # A trained model gives the reversal more probability than the unreversed source.
    right = reverse_translators[arch].score(SOURCES, TARGETS)
    wrong = reverse_translators[arch].score(SOURCES, SOURCES)
    better = [
        r > w for (r, _), (w, _), s in zip(right, wrong, SOURCES, strict=True) if s != s[::-1]
    ]
    assert sum(better) >= 0.8 * len(better)


def test_score_of_an_ensemble_of_one_model_twice(
    arch: str, reverse_runs: dict, reverse_translators
) -> None:
    twice = Translator.from_run(reverse_runs[arch], ["best", "best"], device="cpu")
    single = reverse_translators[arch].score(SOURCES, TARGETS)
    for (a, n), (b, m) in zip(twice.score(SOURCES, TARGETS), single, strict=True):
        assert n == m and a == pytest.approx(b, abs=1e-4)


def test_score_of_a_target_longer_than_the_model_is_nan(reverse_runs: dict, caplog) -> None:
    translator = Translator.from_run(reverse_runs["transformer"], device="cpu")
    limit = translator.model.max_positions
    long = " ".join(["a"] * (limit + 5))
    scores = translator.score([SOURCES[0], SOURCES[0]], [long, SOURCES[0]])
    assert math.isnan(scores[0][0]) and scores[0][1] == 0
    assert math.isfinite(scores[1][0])
    assert "exceed the model" in caplog.text


# ---------------------------------------------------------------------------- CUDA

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_int8_is_refused(reverse_runs: dict) -> None:
    with pytest.raises(ConfigError, match="int8"):
        Translator.from_run(reverse_runs["rnn"], device="cuda", decode={"quantize": "int8"})


@cuda
def test_cuda_configure_int8_leaves_the_gpu_model_alone(reverse_runs: dict) -> None:
    # Translator's docstring: int8 asked for on a GPU is a ConfigError; either way the
    # fp32 model the translator holds must stay where it is.
    translator = Translator.from_run(reverse_runs["rnn"], device="cuda")
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
def test_cuda_decoding_matches_cpu(arch: str, reverse_runs: dict, greedy_outputs: dict) -> None:
    gpu = Translator.from_run(reverse_runs[arch], device="cuda")
    assert agreement(gpu(SOURCES), texts_of(greedy_outputs[arch])) >= 0.9
    bf16 = gpu.configure(precision="bf16")
    assert agreement(bf16(SOURCES), texts_of(greedy_outputs[arch])) >= 0.8
    sampler = {"method": "sample", "seed": 1, "temperature": 3.0}
    assert gpu.configure(**sampler)(SOURCES) == gpu.configure(**sampler)(SOURCES)
    beam = gpu.configure(method="beam", beam_size=4, n_best=3).translate(SOURCES, attention=True)
    assert all(len(r.nbest) == 3 for r in beam)
    ensemble = Translator.from_run(reverse_runs[arch], ["best", "last"], device="cuda")
    assert len(ensemble(SOURCES)) == len(SOURCES)
    scores = gpu.score(SOURCES, TARGETS)
    expected = Translator.from_run(reverse_runs[arch], device="cpu").score(SOURCES, TARGETS)
    for (a, n), (b, m) in zip(scores, expected, strict=True):
        assert n == m and a == pytest.approx(b, rel=1e-2, abs=1e-2)  # TF32 on the GPU
