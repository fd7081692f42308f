"""Runs trained on records: language tags (--tgt-lang, tgt_lang=), tasks, and `seq2seq chat`."""

from __future__ import annotations

import json
import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seq2seq.api import Seq2Seq
from seq2seq.data.records import Rendering
from seq2seq.errors import ConfigError
from seq2seq.inference import Translator
from seq2seq.inference.chat import Conversation
from tests.conftest import cli_error, cli_lines, same_threads

TRAIN = {
    "seed": 1,
    "batch_tokens": 600,
    "lr": 3e-3,
    "label_smoothing": 0.0,
    "max_steps": 60,
    "valid_every": 30,
    "log_every": 100,
    "device": "cpu",
    "threads": 1,
}
MODEL = {"arch": "rnn", "emb_dim": 32, "hidden_dim": 64, "dropout": 0.0}


@pytest.fixture(scope="module")
def tagged_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Two built-in tasks in one model, told apart by <2rev>/<2srt> tags; its history."""
    out = tmp_path_factory.mktemp("tagged") / "run"
    tasks = [
        {"name": "rev", "task": "reverse", "tgt_lang": "rev", "weight": 1.0},
        {"name": "srt", "task": "sort", "tgt_lang": "srt", "weight": 1.0, "metric": "chrf"},
    ]
    data = {"tasks": tasks, "task_size": 600, "tokenizer": "word", "lang_tags": True}
    with same_threads():
        history = Seq2Seq(data=data, model=MODEL, train={**TRAIN, "early_stop_metric": "bleu"}).fit(
            out=out
        )
    return out, history


def _dialogues(n: int, seed: int = 0) -> list[dict]:
    """Records whose reply repeats the first word of the turn before it."""
    rng = random.Random(seed)
    words = "red green blue black white pink gray".split()
    records = []
    for _ in range(n):
        turns = [" ".join(rng.choices(words, k=3)) for _ in range(3)]
        records.append({"context": turns, "tgt": turns[-1].split()[0]})
    return records


@pytest.fixture(scope="module")
def dialogue_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dialogue")
    for name, n in (("train", 400), ("valid", 20)):
        lines = "".join(json.dumps(r) + "\n" for r in _dialogues(n, seed=len(name)))
        (root / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    data = {
        "train": str(root / "train.jsonl"),
        "valid": str(root / "valid.jsonl"),
        "tokenizer": "word",
        "context_turns": 2,
        "truncate": "oldest_turns",
        "max_src_len": 12,
    }
    with same_threads():
        Seq2Seq(data=data, model=MODEL, train=TRAIN).fit(out=root / "run")
    return root / "run"


def test_each_task_is_validated_on_its_own_and_best_is_their_mean(tagged_run) -> None:
    _, history = tagged_run
    last = [r for r in history if "valid_rev_bleu" in r][-1]
    assert {"valid_rev_bleu", "valid_srt_bleu", "valid_srt_chrf", "valid_bleu"} <= set(last)
    # early stopping on BLEU: the mean of each task's metric (BLEU for rev, chrF for srt)
    assert last["valid_bleu"] == pytest.approx(
        (last["valid_rev_bleu"] + last["valid_srt_chrf"]) / 2
    )


def test_the_run_remembers_its_tags_as_symbols(tagged_run) -> None:
    run, _ = tagged_run
    translator = Translator.from_run(run, device="cpu")
    assert {"<2rev>", "<2srt>"} <= set(translator.src_codec.tokenizer.symbols)
    assert translator.src_codec.pieces("<2rev> a b") == ["<2rev>", "a", "b"]
    assert translator.render(["a b", ""], tgt_lang="srt") == ["<2srt> a b", ""]


def test_tgt_lang_chooses_the_tag_and_unknown_ones_are_named(tagged_run, capsys, tmp_path) -> None:
    run, _ = tagged_run
    src = tmp_path / "src.txt"
    src.write_text("c a b\n", encoding="utf-8")
    assert len(cli_lines(["translate", run, "-i", src, "--tgt-lang", "rev"], capsys)) == 1
    err = cli_error(["translate", run, "-i", src, "--tgt-lang", "xx"], capsys)
    assert "--tgt-lang xx: not a language of this run; it knows rev, srt" in err
    err = cli_error(["translate", run, "-i", src], capsys)
    assert "choose the language with --tgt-lang" in err and "rev, srt" in err
    scores = cli_lines(
        ["evaluate", run, "--src", src, "--ref", src, "--tgt-lang", "srt", "--json"], capsys
    )
    assert '"bleu"' in "\n".join(scores)
    model = Seq2Seq.load(run, device="cpu")
    assert len(model.predict(["c a b"], tgt_lang="srt")) == 1
    with pytest.raises(ConfigError, match="it knows rev, srt"):
        model.predict(["c a b"], tgt_lang="de")


def test_the_api_scores_each_task_of_the_test_split(tagged_run) -> None:
    run, _ = tagged_run
    model = Seq2Seq.load(run, device="cpu")
    scores = model.evaluate(metrics=["bleu", "exact"])
    assert set(scores["tasks"]) == {"rev", "srt"} and "exact_match" in scores["tasks"]["rev"]
    with pytest.raises(ConfigError, match="its records ask for <2xx>, which this run"):
        model.evaluate([("c a b", "a b c")], tgt_lang="xx")
    assert len(model.score(["c a b"], ["a b c"], tgt_lang="rev")) == 1


def test_a_run_without_tags_refuses_tgt_lang(reverse_runs, capsys, tmp_path) -> None:
    src = tmp_path / "src.txt"
    src.write_text("a b\n", encoding="utf-8")
    err = cli_error(["translate", reverse_runs["rnn"], "-i", src, "--tgt-lang", "de"], capsys)
    assert "--tgt-lang de: this run was trained without language tags" in err


class _Echo:
    """An engine stand-in that answers with the source it was given."""

    rendering = Rendering(context_turns=3)

    def check_tags(self, tgt_lang, task):
        pass

    def translate(self, texts):
        return [type("T", (), {"text": f"[{t}]"}) for t in texts]


def test_a_conversation_feeds_its_history_back_as_context() -> None:
    chat = Conversation(_Echo())
    assert chat.reply("hi") == "[hi]"
    assert chat.reply("more") == "[hi <eou> [hi] <eou> more]"
    # the last 3 turns: the user's "more", the model's answer to it, the user's "x"
    assert chat.reply("x") == "[more <eou> [hi <eou> [hi] <eou> more] <eou> x]"
    chat.reset()
    assert chat.reply("new") == "[new]"
    assert Conversation(_Echo(), context_turns=1).reply("a") == "[a]"


def test_evaluate_reads_a_corpus_rendered_like_the_runs_data(dialogue_run, capsys) -> None:
    valid = dialogue_run.parent / "valid.jsonl"
    lines = cli_lines(
        ["evaluate", dialogue_run, "--data", valid, "--metrics", "bleu1,distinct", "--json"],
        capsys,
    )
    scores = json.loads("\n".join(lines))
    assert {"bleu1", "distinct1", "distinct2"} <= set(scores)
    err = cli_error(["evaluate", dialogue_run, "--data", valid, "--src", valid], capsys)
    assert "--data holds sources and references: drop --src and --ref" in err


def _chat_command(run: Path) -> list[str]:
    return [sys.executable, "-m", "seq2seq.cli", "chat", str(run), "--device", "cpu"]


def test_chat_answers_each_line_of_a_pipe(dialogue_run: Path) -> None:
    done = subprocess.run(
        _chat_command(dialogue_run),
        input="red blue green\n\n/reset\nblue pink gray\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2  # one reply per turn; "" and /reset get none
    assert "Traceback" not in done.stderr


def _read_until(fd: int, marker: bytes, timeout: float = 60.0) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {marker!r} from chat; it printed {seen!r}")
        seen += os.read(fd, 4096)
    return seen


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_chat_talks_on_a_terminal(dialogue_run: Path) -> None:
    master, slave = os.openpty()
    process = subprocess.Popen(
        _chat_command(dialogue_run), stdin=slave, stdout=slave, stderr=slave, close_fds=True
    )
    os.close(slave)
    try:
        assert b"/reset starts a new conversation" in _read_until(master, b"> ")
        os.write(master, b"red blue green\n")
        seen = _read_until(master, b"> ")  # the echoed turn, the reply, the next prompt
        reply = seen.split(b"red blue green", 1)[1]
        assert reply.strip(b"> \r\n"), seen
        os.write(master, b"\n")  # an empty line ends the conversation
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        os.close(master)
