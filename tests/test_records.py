"""Records rendered to model input: turns, tags, truncation, and the errors of bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seq2seq.config import from_dict
from seq2seq.data.batching import Examples
from seq2seq.data.corpus import read_parallel
from seq2seq.data.prepare import fit_codecs, load_split
from seq2seq.data.records import Record, Rendering, SourceCut, Turn, parse_record
from seq2seq.errors import ConfigError, DataError
from seq2seq.rundir import RunDir
from seq2seq.training.order import BatchOrder

DIALOGUE = Record(
    src="fine , thanks .",
    tgt="good to hear .",
    context=(Turn("hello !", "Ann"), Turn("hi , how are you ?", "Bob")),
    speaker="Ann",
    tgt_lang="en",
    task="chat",
)


def _jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_turns_are_joined_oldest_first_and_the_last_n_kept() -> None:
    assert Rendering().source(DIALOGUE) == "hello ! <eou> hi , how are you ? <eou> fine , thanks ."
    assert Rendering(context_turns=2).source(DIALOGUE) == "hi , how are you ? <eou> fine , thanks ."
    assert Rendering(context_turns=1).source(DIALOGUE) == "fine , thanks ."
    context_only = Record(context=(Turn("a"), Turn("b")), tgt="c")  # the newest turn is "b"
    assert Rendering(turn_separator="<sep>").source(context_only) == "a <sep> b"


def test_speaker_and_tags_come_as_configured() -> None:
    rendering = Rendering(context_turns=2, speaker_tags=True, lang_tags=True, task_tags=True)
    assert rendering.source(DIALOGUE) == (
        "<task:chat> <2en> Bob: hi , how are you ? <eou> Ann: fine , thanks ."
    )
    assert rendering.symbols([DIALOGUE]) == ["<task:chat>", "<2en>", "<eou>"]
    assert Rendering(context_turns=1).symbols([DIALOGUE]) == []  # one turn: no separator
    with pytest.raises(DataError, match="lang_tags is on but a record has no tgt_lang"):
        Rendering(lang_tags=True).source(Record("x", "y"))


def test_the_cut_drops_oldest_turns_first_and_keeps_the_tags() -> None:
    sep, tag = 9, 8
    ids = [tag, 1, 1, 1, sep, 2, 2, sep, 3, 3]
    cut = SourceCut(limit=6, oldest_first=True, separator=sep, tags=frozenset({tag}))
    assert cut(ids) == [tag, 2, 2, sep, 3, 3]  # the oldest turn went whole
    assert SourceCut(4, True, sep, frozenset({tag}))(ids) == [tag, 3, 3]  # turns go whole
    assert SourceCut(3, True, sep, frozenset({tag}))(ids) == [tag, 3, 3]  # the newest turn
    assert SourceCut(2, True, sep, frozenset({tag}))(ids) == [tag, 3]  # its newest tokens
    assert SourceCut(3, True, None, frozenset({tag}))(ids) == [tag, 3, 3]  # no separator
    assert SourceCut(6)(ids) == ids[:6]  # data.truncate: end
    assert cut(ids[:5]) == ids[:5]  # short enough: untouched


def test_the_cut_of_a_run_finds_separator_and_tags_in_its_vocabulary(tmp_path: Path) -> None:
    records = [
        {"context": [f"turn {i} of many words", "and another one"], "tgt": "ok", "tgt_lang": "de"}
        for i in range(200)
    ]
    cfg = from_dict(
        {
            "data": {
                "train": str(_jsonl(tmp_path / "d.jsonl", records)),
                "tokenizer": "sentencepiece",
                "vocab_size": 60,
                "joint_vocab": True,
                "lang_tags": True,
                "truncate": "oldest_turns",
                "max_src_len": 6,
                "symbols": ["<eou>", "<2de>"],
            }
        }
    )
    text = load_split(cfg.data, "train")
    assert text.src[0] == "<2de> turn 0 of many words <eou> and another one"
    assert set(text.symbols) == {"<2de>", "<eou>"}
    codec, _ = fit_codecs(cfg.data, text, RunDir(tmp_path / "run"))
    cut = SourceCut.of(cfg.data, codec)
    kept = codec.decode(cut(codec.encode(text.src[0])), keep_symbols=True)
    assert kept.startswith("<2de>") and "turn" not in kept and kept.endswith("another one")
    assert codec.pieces("<2de> x <eou> y").count("<eou>") == 1  # one token each
    assert codec.decode(codec.encode(text.src[0])) == "turn 0 of many words and another one"


def test_jsonl_records_are_rendered_and_plain_pairs_still_read(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "c.jsonl",
        [
            {"id": 7, "src": "a b", "tgt": "x"},
            {"context": [{"speaker": "Ann", "text": "hi"}, "yo"], "src": "ok?", "tgt": "y"},
        ],
    )
    text = read_parallel(path, "s", "t", rendering=Rendering(speaker_tags=True))
    assert text.src == ["a b", "Ann: hi <eou> yo <eou> ok?"] and text.tgt == ["x", "y"]
    assert text.symbols == ("<eou>",)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"src": "a"}, 'line 2: the record has no "tgt"'),
        ({"src": 3, "tgt": "x"}, 'line 2: field "src" must be a string, got int'),
        ({"context": "a b", "tgt": "x"}, 'line 2: field "context" must be a list'),
        ({"context": [["a"]], "tgt": "x"}, r"line 2, context\[0\]: a turn is a string"),
        ({"tgt": "x"}, 'line 2: a record needs "src" or a non-empty "context"'),
        ({"src": "a", "tgt": "x", "tgt_lang": 1}, 'field "tgt_lang" must be a string'),
        (["a", "x"], "line 2: expected a JSON object, got list"),
    ],
)
def test_a_bad_record_names_file_line_and_field(tmp_path: Path, record, message) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", [{"src": "fine", "tgt": "ok"}, record])
    with pytest.raises(DataError, match=message) as err:
        read_parallel(path, "s", "t")
    assert str(path) in str(err.value)


def test_parse_record_reads_every_field() -> None:
    obj = {"src": "s", "tgt": "t", "context": ["c"], "speaker": "A", "tgt_lang": "de", "task": "x"}
    record = parse_record(obj, "f, line 1")
    assert record.turns() == [Turn("c"), Turn("s", "A")]
    assert (record.tgt_lang, record.task, record.tgt) == ("de", "x", "t")


def _tasks_cfg(tmp_path: Path, **data) -> object:
    for lang, words in (("en", "one two three"), ("de", "eins zwei drei"), ("fr", "un deux")):
        (tmp_path / f"train.{lang}").write_text(f"{words}\n" * 30, encoding="utf-8")
        (tmp_path / f"valid.{lang}").write_text(f"{words}\n" * 3, encoding="utf-8")
    tasks = [
        {"name": f"en-{lang}", "train": str(tmp_path / "train"), "valid": str(tmp_path / "valid"),
         "src_lang": "en", "tgt_lang": lang, "weight": weight}
        for lang, weight in (("de", 3.0), ("fr", 1.0))
    ]  # fmt: skip
    return from_dict({"data": {"tasks": tasks, "tokenizer": "word", **data}})


def test_tasks_are_read_one_after_another_with_their_tags(tmp_path: Path) -> None:
    cfg = _tasks_cfg(tmp_path, lang_tags=True)
    train = load_split(cfg.data, "train")
    assert [(p.name, p.start, p.stop) for p in train.parts] == [("en-de", 0, 30), ("en-fr", 30, 60)]
    assert train.src[0] == "<2de> one two three" and train.src[30] == "<2fr> one two three"
    assert train.tgt[0] == "eins zwei drei" and train.tgt[30] == "un deux"
    assert train.symbols == ("<2de>", "<2fr>")
    assert len(load_split(cfg.data, "valid").parts) == 2


def test_task_weights_set_each_tasks_share_of_an_epoch() -> None:
    examples = Examples([[1]] * 40, [[2]] * 40, group=[0] * 30 + [1] * 10)
    order = BatchOrder(examples, 8, 10, seed=1, weights=(1.0, 3.0))
    epoch = [i for batch in order.epoch(0) for i in batch]
    assert len(epoch) == 40
    assert sum(i >= 30 for i in epoch) == 30  # task 1 oversampled: its 10 examples thrice
    assert sum(i < 30 for i in epoch) == 10 and len({i for i in epoch if i < 30}) == 10
    again = BatchOrder(examples, 8, 10, seed=1, weights=(1.0, 3.0))
    assert again.epoch(0) == order.epoch(0)  # rebuilt from (seed, epoch): exact resume


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([{"name": "a", "task": "dates"}, {"name": "a", "task": "sort"}], "names .* repeat"),
        ([{"task": "dates"}], r"data.tasks\[0\].name: '': every task needs a name"),
        ([{"name": "a"}], r"data.tasks\[0\]: give exactly one of train"),
        ([{"name": "a", "task": "dates", "weight": 0}], "every weight is 0"),
        ([{"name": "a", "task": "dates", "wieght": 1}], r"'data.tasks\[0\].wieght'.*'weight'"),
    ],
)
def test_bad_tasks_are_clear_config_errors(tasks, message) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict({"data": {"tasks": tasks}})


def test_tasks_replace_the_single_corpus_keys() -> None:
    with pytest.raises(ConfigError, match="remove data.task, data.train, data.valid and data.test"):
        from_dict({"data": {"task": "dates", "tasks": [{"name": "a", "task": "sort"}]}})


def test_a_dialogue_file_gives_a_record_for_every_reply(tmp_path: Path) -> None:
    path = tmp_path / "dialogues.txt"
    path.write_text("Hi . __eou__ Hello ! __eou__ How are  you ? __eou__\nYes . __eou__\n")
    text = read_parallel(path, "s", "t", rendering=Rendering(), dialogue_eou="__eou__")
    assert text.src == ["Hi .", "Hi . <eou> Hello !"]  # a one-turn dialogue has no reply
    assert text.tgt == ["Hello !", "How are you ?"]
    cfg = from_dict({"data": {"train": str(path), "dialogue_eou": "__eou__", "context_turns": 1}})
    assert load_split(cfg.data, "train").src == ["Hi .", "Hello !"]  # the config's way
    path.write_text("Hi . __eou__ Hello ! __eou__\nno marker here\n")
    with pytest.raises(DataError, match=r"dialogues.txt, line 2: no '__eou__' in the line"):
        read_parallel(path, "s", "t", dialogue_eou="__eou__")


def test_oldest_turns_needs_a_length_to_cut_to() -> None:
    with pytest.raises(ConfigError, match="data.truncate: oldest_turns drops turns"):
        from_dict({"data": {"task": "dates", "truncate": "oldest_turns"}})
