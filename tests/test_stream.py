"""Streamed training corpora: the survey and its sample, the memory-mapped token cache,
the windowed batch order, and training from a stream (exact resume included)."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq.api import Seq2Seq
from seq2seq.cli import main
from seq2seq.config import load_config
from seq2seq.data import prepare as prepare_mod
from seq2seq.data.batching import length_key
from seq2seq.data.cache import MappedRows, encode_stream
from seq2seq.data.corpus import read_parallel
from seq2seq.data.prepare import encode, fit_codecs, fitting_text, load_training
from seq2seq.data.records import Rendering, SourceCut
from seq2seq.data.stream import CorpusStream, Survey
from seq2seq.data.tasks import make_task
from seq2seq.errors import ConfigError, DataError
from seq2seq.rundir import RunDir
from seq2seq.training.order import BatchOrder, StreamOrder, batch_order
from tests.test_distributed import _ok, _torchrun, _weights


def _write_pairs(prefix: Path, n: int, seed: int = 1) -> tuple[list[str], list[str]]:
    src, tgt = make_task("reverse", "train", n, seed)
    prefix.with_suffix(".src").write_text("\n".join(src) + "\n", encoding="utf-8")
    prefix.with_suffix(".tgt").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return src, tgt


def _config(tmp_path: Path, n: int = 600, **sections) -> Path:
    _write_pairs(tmp_path / "c", n)
    _write_pairs(tmp_path / "v", 40, seed=2)
    cfg = {
        "data": {"train": "c", "valid": "v", "tokenizer": "word", "stream": True},
        "model": {"emb_dim": 8, "hidden_dim": 16, "dropout": 0.3},
        "train": {
            "seed": 3,
            "batch_tokens": 200,
            "pool_batches": 4,  # windows of a few batches: an epoch crosses many
            "max_steps": 12,
            "valid_every": 4,
            "valid_bleu": False,
            "device": "cpu",
            "threads": 1,
            "dist_timeout": 60,
        },
        "decode": {"max_len_a": 1.0, "max_len_b": 4},
    }
    for section, values in sections.items():
        cfg[section].update(values)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- reading


def test_a_stream_yields_the_pairs_read_parallel_reads(tmp_path: Path) -> None:
    records = [
        {"context": ["Hi there", "Hello"], "tgt": "How are you?", "tgt_lang": "de", "task": "a"},
        {"src": "", "tgt": "skipped: empty source"},
        {"src": "Good night", "tgt": "Night!", "task": "chat"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    rendering = Rendering(lang_tags=True, task_tags=True)
    whole = read_parallel(path, "src", "tgt", "train", rendering=rendering)
    stream = CorpusStream(path, "src", "tgt", "train", rendering=rendering)
    assert list(stream) == list(zip(whole.src, whole.tgt, strict=True))
    sample = stream.surveyed(None, sample=10)
    assert stream.survey.pairs == 2 and stream.survey.skipped_empty == 1
    assert stream.survey.symbols == whole.symbols  # the tags and the separator
    assert sorted(sample.src) == sorted(whole.src) and sample.symbols == whole.symbols


def test_stream_errors_name_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "p.src").write_text("a\nb\nc\n", encoding="utf-8")
    (tmp_path / "p.tgt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p.src has 3 lines but .*p.tgt has 2 lines"):
        list(CorpusStream(tmp_path / "p", "src", "tgt"))
    (tmp_path / "p.tgt").write_text("a\nb\nc\nd\ne\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p.src has 3 lines but .*p.tgt has 5 lines"):
        list(CorpusStream(tmp_path / "p", "src", "tgt"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"src": "a", "tgt": "b"}\n{"src": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: .*\"tgt\""):
        CorpusStream(bad, "src", "tgt").surveyed(None)
    with pytest.raises(DataError, match="not found"):
        CorpusStream(tmp_path / "missing", "src", "tgt")


def test_the_sample_is_seeded_uniform_and_of_the_asked_size(tmp_path: Path) -> None:
    src, _ = _write_pairs(tmp_path / "c", 2000)
    stream = CorpusStream(tmp_path / "c", "src", "tgt")
    a = stream.surveyed(None, sample=500, seed=4)
    assert len(a.src) == 500 and set(a.src) <= set(src)
    assert a.src == stream.surveyed(None, sample=500, seed=4).src
    assert a.src != stream.surveyed(None, sample=500, seed=5).src
    # uniform: the second half of the file is not under-represented (Algorithm R)
    late = set(src[1000:])
    assert 200 < sum(s in late for s in a.src) < 300


def test_the_survey_is_kept_and_the_fingerprint_follows_the_files(tmp_path: Path) -> None:
    records = [{"context": ["hi", "hello"], "tgt": f"reply {i}"} for i in range(30)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    stream = CorpusStream(path, "src", "tgt", rendering=Rendering(turn_separator="<eou>"))
    cache = tmp_path / "cache"
    stream.surveyed(cache)
    assert stream.survey == Survey(30, 0, ("<eou>",))
    assert (cache / f"{stream.fingerprint()}.survey.json").is_file()
    path.write_text("garbage that is not read again", encoding="utf-8")
    os.utime(path, ns=(0, 0))
    again = CorpusStream(path, "src", "tgt", rendering=Rendering(turn_separator="<eou>"))
    with pytest.raises(DataError, match="invalid JSON"):  # the survey was of other bytes
        again.surveyed(cache)


def test_a_plain_file_pair_is_not_surveyed_without_a_sample(tmp_path: Path) -> None:
    _write_pairs(tmp_path / "c", 50)
    stream = CorpusStream(tmp_path / "c", "src", "tgt")
    assert stream.writes_no_symbols
    assert stream.surveyed(tmp_path / "cache").src == [] and stream.survey.pairs is None
    assert stream.surveyed(None, sample=5).symbols == () and stream.survey.pairs == 50
    tagged = CorpusStream(tmp_path / "c", "src", "tgt", rendering=Rendering(lang_tags=True))
    assert not tagged.writes_no_symbols
    tagged.surveyed(None)
    assert tagged.survey.symbols == ("<2tgt>",)


def test_the_fingerprint_follows_the_files(tmp_path: Path) -> None:
    _write_pairs(tmp_path / "c", 50)
    stream = CorpusStream(tmp_path / "c", "src", "tgt")
    fingerprint = stream.fingerprint()
    assert CorpusStream(tmp_path / "c", "src", "tgt").fingerprint() == fingerprint
    with open(tmp_path / "c.src", "a", encoding="utf-8") as f:
        f.write("one more\n")
    with open(tmp_path / "c.tgt", "a", encoding="utf-8") as f:
        f.write("more one\n")
    assert stream.fingerprint() != fingerprint
    # the same bytes with a new modification time: read again too (never a stale cache)
    before = stream.fingerprint()
    os.utime(tmp_path / "c.src", ns=(0, 0))
    assert stream.fingerprint() != before


# ---------------------------------------------------------------------------- the cache


def test_the_mapped_cache_holds_what_in_memory_encoding_holds(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, 300)).data
    cfg_cut = load_config(
        _config(tmp_path, 300, data={"max_src_len": 6, "max_tgt_len": 7})
    ).data  # cut sources, drop long targets
    run = RunDir(tmp_path / "run")
    whole = read_parallel(tmp_path / "c", "src", "tgt", "train")
    codecs = fit_codecs(cfg, whole, run)
    stream = CorpusStream(tmp_path / "c", "src", "tgt", "train")
    for data in (cfg, cfg_cut):
        cut = SourceCut.of(data, codecs[0])
        expected = encode(whole, *codecs, data.max_len, cut=cut, max_tgt_len=data.max_tgt_len)
        mapped = encode_stream(
            stream, *codecs, run.cache, cut=cut, max_len=data.max_len, max_tgt_len=data.max_tgt_len
        )
        assert isinstance(mapped.src, MappedRows)
        assert list(mapped.src) == expected.src and list(mapped.tgt) == expected.tgt
    assert len(list(run.cache.glob("stream-*"))) == 2  # one per setting
    assert not list(run.cache.glob("*.part-*"))  # no partial directory left


def test_the_cache_is_built_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = load_config(_config(tmp_path, 100)).data
    run = RunDir(tmp_path / "run")
    stream = CorpusStream(tmp_path / "c", "src", "tgt", "train")
    codecs = fit_codecs(data, stream.surveyed(None, 100), run)
    with caplog.at_level(logging.INFO, logger="seq2seq"):
        first = encode_stream(
            stream, *codecs, run.cache, cut=SourceCut(), max_len=100, max_tgt_len=None
        )
        second = encode_stream(
            stream, *codecs, run.cache, cut=SourceCut(), max_len=100, max_tgt_len=None
        )
    assert caplog.text.count("encoded into the cache") == 1
    assert list(first.tgt) == list(second.tgt)


def test_a_stream_with_nothing_within_the_limits_is_a_data_error(tmp_path: Path) -> None:
    data = load_config(_config(tmp_path, 50)).data
    run = RunDir(tmp_path / "run")
    stream = CorpusStream(tmp_path / "c", "src", "tgt", "train")
    codecs = fit_codecs(data, stream.surveyed(None, 50), run)
    with pytest.raises(DataError, match=r"no sentence pairs left within data.max_len=1"):
        encode_stream(stream, *codecs, run.cache, cut=SourceCut(), max_len=1, max_tgt_len=None)


# ---------------------------------------------------------------------------- the order


def _mapped(tmp_path: Path, n: int, lengths: list[tuple[int, int]] | None = None):
    """``n`` pairs of the reverse task, memory-mapped; or, with ``lengths``, pairs of
    those (source, target) lengths in words."""
    data = load_config(_config(tmp_path, n)).data
    if lengths is not None:
        for suffix, side in (".src", 0), (".tgt", 1):
            lines = [" ".join(["w"] * pair[side]) for pair in lengths]
            (tmp_path / "c").with_suffix(suffix).write_text("\n".join(lines) + "\n")
    run = RunDir(tmp_path / "run")
    stream = CorpusStream(tmp_path / "c", "src", "tgt", "train")
    codecs = fit_codecs(data, stream.surveyed(None, n), run)
    return encode_stream(stream, *codecs, run.cache, cut=SourceCut(), max_len=100, max_tgt_len=None)


def test_an_epoch_of_the_stream_order_has_every_example_once(tmp_path: Path) -> None:
    examples = _mapped(tmp_path, 700)
    order = batch_order(examples, 60, 3, seed=5)
    assert isinstance(order, StreamOrder) and order.n_windows > 5
    seen: list[int] = []
    n_batches = 0
    position = (0, 0)
    while position[0] == 0:
        (batch,), position = order.take(position, 1)
        seen += batch
        n_batches += 1
        sizes = [max(len(examples.src[i]), len(examples.tgt[i])) + 1 for i in batch]
        assert len(batch) == 1 or max(sizes) * len(batch) <= 60  # the token budget
    assert sorted(seen) == list(range(len(examples)))  # all of them, none twice
    assert position == (1, 0)
    # shuffled: neither in file order nor the same in the next epoch
    assert seen != sorted(seen)
    again, _ = order.take((1, 0), n_batches)
    assert [i for b in again for i in b] != seen


def test_the_stream_order_cuts_each_window_sorted_by_the_length_key(tmp_path: Path) -> None:
    rng = random.Random(0)  # sides of random lengths, either of them the longer
    lengths = [(rng.randint(1, 12), rng.randint(1, 12)) for _ in range(700)]
    examples = _mapped(tmp_path, 700, lengths)
    order = batch_order(examples, 60, 3, seed=5)
    batches: list[list[int]] = []
    position = (0, 0)
    while position[0] == 0:  # one epoch
        more, position = order.take(position, 1)
        batches += more
    spans: dict[int, list[tuple]] = {}  # window -> (first key, last key) of its batches
    for batch in batches:
        keys = sorted(length_key(len(examples.src[i]), len(examples.tgt[i])) for i in batch)
        spans.setdefault(batch[0] // order.window, []).append((keys[0], keys[-1]))
    for window in spans.values():  # a window's batches are runs of one sorted order
        window.sort()
        assert all(a[1] <= b[0] for a, b in zip(window, window[1:], strict=False))


def test_the_stream_order_resumes_from_any_position(tmp_path: Path) -> None:
    examples = _mapped(tmp_path, 400)
    straight, end = batch_order(examples, 60, 3, seed=5).take((0, 0), 90)
    assert end[0] >= 1  # crosses an epoch
    for cut in (0, 1, 17, 45, 89):
        fresh = StreamOrder(examples, 60, 3, seed=5)  # rebuilt, as on resume
        head, position = fresh.take((0, 0), cut) if cut else ([], (0, 0))
        rest, _ = StreamOrder(examples, 60, 3, seed=5).take(position, 90 - cut)
        assert head + rest == straight


def test_in_memory_examples_keep_the_batch_order(tmp_path: Path) -> None:
    data = load_config(_config(tmp_path, 50)).data
    whole = read_parallel(tmp_path / "c", "src", "tgt")
    codecs = fit_codecs(data, whole, RunDir(tmp_path / "run"))
    assert isinstance(batch_order(encode(whole, *codecs, 100), 60, 3, 1), BatchOrder)


# ---------------------------------------------------------------------------- config


def test_stream_auto_streams_large_files_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_config(_config(tmp_path, 100, data={"stream": "auto"})).data
    assert not isinstance(load_training(data), CorpusStream)
    monkeypatch.setattr(prepare_mod, "STREAM_AUTO_BYTES", 100)
    assert isinstance(load_training(data), CorpusStream)
    off = load_config(_config(tmp_path, 100, data={"stream": False})).data
    assert not isinstance(load_training(off), CorpusStream)


def test_stream_true_refuses_what_it_cannot_stream(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"task": "dates", "stream": True}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="data.stream: a stream reads one corpus"):
        load_config(path)
    path.write_text(yaml.safe_dump({"data": {"stream": "yes"}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="data.stream"):
        load_config(path)


def test_the_tokenizers_are_fitted_on_the_sample_unless_given(tmp_path: Path) -> None:
    data = load_config(_config(tmp_path, 300, data={"stream_sample": 20})).data
    stream = load_training(data)
    assert len(fitting_text(data, stream, None).src) == 20
    assert fitting_text(data, stream, None, fitted=True).src == []  # resuming: no sample


# ---------------------------------------------------------------------------- training


def test_training_from_a_stream_resumes_bit_exactly(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert main(["train", str(config), "--out", str(tmp_path / "a")]) == 0
    assert main(["train", str(config), "--out", str(tmp_path / "b"), "train.max_steps=5"]) == 0
    assert main(["train", str(config), "--out", str(tmp_path / "b"), "--resume"]) == 0
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert all(torch.equal(a[n], b[n]) for n in a)
    log = (tmp_path / "b" / "train.log").read_text(encoding="utf-8")
    assert log.count("encoded into the cache") == 1  # the resume mapped the same cache
    assert "fitting the tokenizers on train" in log


def test_two_ranks_on_a_stream_equal_one_process_accumulating_two(tmp_path: Path) -> None:
    config = _config(tmp_path, model={"dropout": 0.0}, train={"max_steps": 6})
    _ok(_torchrun(config, tmp_path / "ddp"))
    assert main(["train", str(config), "--out", str(tmp_path / "one"), "train.accumulate=2"]) == 0
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    assert all(torch.allclose(a[n], b[n], atol=1e-5) for n in a)


def test_resuming_with_the_other_kind_of_order_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _config(tmp_path, train={"max_steps": 4})
    assert main(["train", str(config), "--out", str(tmp_path / "a")]) == 0
    resume = ["train", str(config), "--out", str(tmp_path / "a"), "--resume", "train.max_steps=8"]
    assert main([*resume, "data.stream=false"]) != 0
    assert (
        "was trained on a corpus read as a stream, but this config reads it into memory"
        in capsys.readouterr().err
    )
    assert main(resume) == 0  # as it was trained: fine


def test_an_abandoned_partial_cache_is_removed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = load_config(_config(tmp_path, 50)).data
    run = RunDir(tmp_path / "run")
    stream = CorpusStream(tmp_path / "c", "src", "tgt", "train")
    codecs = fit_codecs(data, stream.surveyed(None, 50), run)

    def build():
        return encode_stream(
            stream, *codecs, run.cache, cut=SourceCut(), max_len=100, max_tgt_len=None
        )

    build()  # to learn the cache's name
    (built,) = run.cache.glob("stream-*")
    shutil.rmtree(built)
    abandoned = built.with_name(f"{built.name}.part-{done.stdout.strip()}")  # a dead pid
    abandoned.mkdir()
    assert len(build()) == 50
    assert not abandoned.exists() and built.is_dir()


def test_fit_on_a_corpus_spec_streams_as_the_config_says(tmp_path: Path) -> None:
    model = Seq2Seq(load_config(_config(tmp_path, train={"max_steps": 2})))
    model.fit(train=str(tmp_path / "c"), out=tmp_path / "run")
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert "memory-mapped from the cache" in log
