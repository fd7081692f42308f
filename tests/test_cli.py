"""The ``seq2seq`` command end to end: train, translate, evaluate and score on toy data in
a temp dir.

One training run goes through a real subprocess (the user's console path); the other
commands call ``seq2seq.cli.main`` in-process, which is the same code without the
interpreter start-up. The decoding options (beam, n-best, sampling, rules, ensembles,
int8, bf16) are checked on the trained reverse runs of tests/conftest.py, against the
native Translator. User errors must exit with status 2 and a one-line message.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq.api import Seq2Seq
from seq2seq.checkpoint import load_checkpoint
from seq2seq.cli import main
from seq2seq.config import load_config
from tests.conftest import (
    ARCHS,
    REVERSE_SOURCES,
    REVERSE_TARGETS,
    agreement,
    cli_error,
    cli_lines,
    run_cli,
)

CONFIG = {
    "data": {"task": "reverse", "task_size": 240, "tokenizer": "char"},
    "model": {"emb_dim": 8, "hidden_dim": 16, "dropout": 0.1},
    "train": {
        "seed": 2,
        "batch_tokens": 300,
        "max_steps": 24,
        "valid_every": 12,
        "log_every": 6,
        "device": "cpu",
        "threads": 1,
    },
    "decode": {"max_len_a": 1.0, "max_len_b": 4},
}
SENTENCES = ["a b c", "", "x 1 y", "q"]


def _write_config(path: Path, **sections: dict) -> Path:
    raw = json.loads(json.dumps(CONFIG))
    for name, updates in sections.items():
        raw.setdefault(name, {}).update(updates)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained by ``python -m seq2seq.cli train CONFIG --out RUN`` in a subprocess."""
    work = tmp_path_factory.mktemp("cli")
    config = _write_config(work / "tiny.yaml")
    out = work / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-m", "seq2seq.cli", "train", str(config), "--out", str(out)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"run directory: {out}" in done.stdout
    assert "valid_loss=" in done.stdout
    return out


@pytest.fixture()
def inputs(tmp_path: Path) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("".join(s + "\n" for s in SENTENCES), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", [[], ["train"], ["translate"], ["evaluate"], ["demo"]])
def test_help_exits_zero(command: list[str], capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: seq2seq" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage" in capsys.readouterr().err


# ---------------------------------------------------------------------------- train


def test_train_writes_run_directory(run_dir: Path) -> None:
    for name in ("config.yaml", "best.safetensors", "last.safetensors", "train.log"):
        assert (run_dir / name).is_file(), name
    cfg = load_config(run_dir / "config.yaml")
    assert cfg.train.max_steps == 24 and cfg.data.task == "reverse"
    assert load_checkpoint(run_dir / "last.safetensors").trainer["progress"]["step"] == 24


def test_train_overrides_after_options_and_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = _write_config(tmp_path / "tiny.yaml")
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        ["train", config, "--out", out, "train.max_steps=4", "train.valid_every=2"], capsys
    )
    assert code == 0, err
    assert f"run directory: {out}" in stdout
    assert load_config(out / "config.yaml").train.max_steps == 4
    code, _, err = run_cli(["train", config, "train.max_steps=6", "--out", out, "--resume"], capsys)
    assert code == 0, err
    progress = load_checkpoint(out / "last.safetensors").trainer["progress"]
    assert progress["step"] == 6
    assert [r["step"] for r in progress["history"]] == [2, 4, 6]


def test_train_default_out_is_runs_config_stem(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write_config(tmp_path / "named.yaml", train={"max_steps": 2, "valid_every": 2})
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", config], capsys)
    assert code == 0, err
    assert (tmp_path / "runs" / "named" / "last.safetensors").is_file()


# ---------------------------------------------------------------------------- translate


def test_translate_file(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.txt"
    code, stdout, err = run_cli(["translate", run_dir, "-i", inputs, "-o", out], capsys)
    assert code == 0, err
    assert stdout == ""
    assert len(_lines(out)) == len(SENTENCES)
    assert _lines(out)[SENTENCES.index("")] == ""  # an empty line stays empty


def test_translate_stdin_matches_file(
    run_dir: Path,
    inputs: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out.txt"
    assert run_cli(["translate", run_dir, "-i", inputs, "-o", out], capsys)[0] == 0
    data = "".join(s + "\r\n" for s in SENTENCES).encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    code, stdout, err = run_cli(["translate", run_dir], capsys)
    assert code == 0, err
    assert stdout.split("\n")[:-1] == _lines(out)


def test_translate_stdin_subprocess(run_dir: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "seq2seq.cli", "translate", str(run_dir), "--checkpoint", "last"],
        input="a b\n\nc\n",
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split("\n")[:-1]) == 3


def test_translate_attention_pngs(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    sentences = [s for s in SENTENCES if s]
    inputs = tmp_path / "in.txt"
    inputs.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    plots = tmp_path / "plots" / "nested"
    out = tmp_path / "out.txt"
    code, _, err = run_cli(
        ["translate", run_dir, "-i", inputs, "-o", out, "--attention", plots], capsys
    )
    assert code == 0, err
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(len(sentences))]
    for name in pngs:
        assert (plots / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_translate_attention_with_empty_line(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.txt"
    argv = ["translate", run_dir, "-i", inputs, "-o", out, "--attention", tmp_path / "plots"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert len(_lines(out)) == len(SENTENCES)
    assert len(list((tmp_path / "plots").glob("*.png"))) >= len([s for s in SENTENCES if s])


def test_translate_explicit_checkpoint_path(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    by_name, by_path = tmp_path / "a.txt", tmp_path / "b.txt"
    assert run_cli(["translate", run_dir, "-i", inputs, "-o", by_name], capsys)[0] == 0
    best = run_dir / "best.safetensors"
    argv = ["translate", run_dir, "--checkpoint", best, "-i", inputs, "-o", by_path]
    assert run_cli(argv, capsys)[0] == 0
    assert _lines(by_name) == _lines(by_path)


# ---------------------------------------------------------------------------- evaluate


@pytest.fixture()
def test_set(tmp_path: Path) -> tuple[Path, Path]:
    src, ref = tmp_path / "test.src", tmp_path / "test.ref"
    src.write_text("a b c\nx y\n1 2 3 4\n", encoding="utf-8")
    ref.write_text("c b a\ny x\n4 3 2 1\n", encoding="utf-8")
    return src, ref


def test_evaluate_table(
    run_dir: Path, test_set: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src, ref = test_set
    hyps = tmp_path / "hyps.txt"
    argv = ["evaluate", run_dir, "--src", src, "--ref", ref, "--metrics", "bleu,chrf,rouge,exact"]
    code, stdout, err = run_cli([*argv, "--hyp-out", hyps], capsys)
    assert code == 0, err
    assert stdout.splitlines()[0].split() == ["metric", "score"]
    for name in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "exact_match"):
        assert any(line.split()[:1] == [name] for line in stdout.splitlines()), name
    assert "bleu_signature: nrefs:1" in stdout
    assert len(_lines(hyps)) == 3


def test_evaluate_json(
    run_dir: Path, test_set: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    src, ref = test_set
    argv = ["evaluate", run_dir, "--src", src, "--ref", ref, "--json"]
    code, stdout, err = run_cli([*argv, "--metrics", "bleu,chrf,rouge,exact"], capsys)
    assert code == 0, err
    scores = json.loads(stdout)
    expected = {"bleu", "bleu_signature", "chrf", "chrf_signature", "rouge1", "rouge2"}
    assert expected | {"rougeL", "rouge_signature", "exact_match"} == set(scores)
    assert 0.0 <= scores["exact_match"] <= 1.0
    assert 0.0 <= scores["bleu"] <= 100.0
    code, stdout, _ = run_cli(argv, capsys)  # the default metrics
    assert code == 0 and {"bleu", "chrf"} <= set(json.loads(stdout))
    code, stdout, err = run_cli([*argv, "--metrics", "distinct,bleu1,bleu2"], capsys)
    assert code == 0, err
    dialogue = json.loads(stdout)
    assert {"distinct1", "distinct2", "bleu1", "bleu2", "bleu2_signature"} == set(dialogue) - {
        "bleu1_signature"
    }
    assert 0.0 <= dialogue["distinct2"] <= 1.0 and 0.0 <= dialogue["bleu2"] <= 100.0


def test_evaluate_with_several_references(
    run_dir: Path, test_set: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src, ref = test_set
    hyps = tmp_path / "hyps.txt"
    argv = ["evaluate", run_dir, "--src", src, "--ref", ref, "--json", "--hyp-out", hyps]
    code, stdout, err = run_cli([*argv, "--metrics", "exact,bleu,rouge"], capsys)
    assert code == 0, err
    one = json.loads(stdout)
    outputs = hyps.read_text(encoding="utf-8")
    other = tmp_path / "other.ref"
    other.write_text(outputs, encoding="utf-8")  # the outputs themselves: a perfect reference
    code, stdout, err = run_cli([*argv, "--ref", other, "--metrics", "exact,bleu,rouge"], capsys)
    assert code == 0, err
    two = json.loads(stdout)
    assert two["exact_match"] == 1.0 and two["rouge1"] >= one["rouge1"]
    assert "nrefs:2" in two["bleu_signature"] and "nrefs:2" in two["rouge_signature"]
    assert two["bleu"] >= one["bleu"]
    other.write_text("one line\n", encoding="utf-8")
    message = cli_error(["evaluate", run_dir, "--src", src, "--ref", ref, "--ref", other], capsys)
    assert f"{src} has 3 lines but {other} has 1" in message


# ---------------------------------------------------------------------------- decoding options

CLI_SOURCES = ["a b c", "x 1 y", "q", "7 t t 2", "m n o p", "z"]
CPU = ["--device", "cpu"]  # the checks compare with CPU decodes, also on a machine with CUDA
MOSES = re.compile(r"(\d+) \|\|\| (.*) \|\|\| (-?\d+\.\d{4})")


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture()
def src_file(tmp_path: Path) -> Path:
    return _write_lines(tmp_path / "in.txt", CLI_SOURCES)


def test_translate_nbest_in_moses_format(
    reverse_runs: dict, src_file: Path, tmp_path: Path, reverse_translators: dict, capsys
) -> None:
    argv = ["translate", reverse_runs["rnn"], "-i", src_file, *CPU]
    lines = cli_lines([*argv, "--beam", "3", "--nbest", "2"], capsys)
    assert len(lines) == 2 * len(CLI_SOURCES)
    parsed = [MOSES.fullmatch(line) for line in lines]
    assert all(parsed), lines
    indices = [int(m.group(1)) for m in parsed]
    assert indices == [i for i in range(len(CLI_SOURCES)) for _ in range(2)]
    expected = reverse_translators["rnn"].configure(method="beam", beam_size=3, n_best=2)
    for i, result in enumerate(expected.translate(CLI_SOURCES)):
        pair = parsed[2 * i : 2 * i + 2]
        assert [m.group(2) for m in pair] == [text for text, _ in result.nbest]
        scores = [float(m.group(3)) for m in pair]
        assert scores == sorted(scores, reverse=True)
        assert scores == pytest.approx([s for _, s in result.nbest], abs=1e-4)
    # --nbest alone implies beam search; -o writes the same lines.
    out = tmp_path / "nbest.txt"
    assert cli_lines([*argv, "--nbest", "3", "-o", out], capsys) == []
    written = out.read_text(encoding="utf-8").splitlines()
    assert len(written) == 3 * len(CLI_SOURCES) and all(MOSES.fullmatch(w) for w in written)


def test_translate_beam_without_nbest_prints_plain_lines(
    reverse_runs: dict, src_file: Path, capsys
) -> None:
    argv = ["translate", reverse_runs["rnn"], "-i", src_file, *CPU, "--beam", "3"]
    lines = cli_lines(argv, capsys)
    assert len(lines) == len(CLI_SOURCES) and not any("|||" in line for line in lines)


def test_translate_sampling_with_a_seed(
    reverse_runs: dict, src_file: Path, reverse_translators: dict, capsys
) -> None:
    run = reverse_runs["rnn"]
    argv = ["translate", run, "-i", src_file, *CPU, "--sample", "-d", "temperature=3"]
    first = cli_lines([*argv, "--seed", "1"], capsys)
    assert cli_lines([*argv, "--seed", "1"], capsys) == first
    assert len(first) == len(CLI_SOURCES)
    sampler = reverse_translators["rnn"].configure(method="sample", seed=1, temperature=3.0)
    assert sampler(CLI_SOURCES) == first
    many = _write_lines(src_file.parent / "many.txt", REVERSE_SOURCES)
    argv[3] = many
    assert cli_lines([*argv, "--seed", "1"], capsys) != cli_lines([*argv, "--seed", "2"], capsys)


def test_translate_decode_settings(reverse_runs: dict, src_file: Path, capsys) -> None:
    argv = ["translate", reverse_runs["rnn"], "-i", src_file, *CPU]
    lines = cli_lines(
        [*argv, "--sample", "--seed", "3", "-d", "top_p=0.9", "-d", "temperature=0.8"], capsys
    )
    assert len(lines) == len(CLI_SOURCES)
    lines = cli_lines([*argv, "--beam", "3", "-d", "banned=[a, b]", "-d", "min_len=2"], capsys)
    assert len(lines) == len(CLI_SOURCES)
    for line in lines:
        assert len(line.split()) >= 2 and not {"a", "b"} & set(line.split()), line
    lines = cli_lines([*argv, "-d", "no_repeat_ngram=1", "-d", "length_penalty=0.6"], capsys)
    assert all(len(set(line.split())) == len(line.split()) for line in lines)


def test_error_decode_settings(reverse_runs: dict, src_file: Path, capsys) -> None:
    argv = ["translate", reverse_runs["rnn"], "-i", src_file, *CPU]
    message = cli_error([*argv, "-d", "nonsense=1"], capsys)
    assert message.startswith("seq2seq translate: error: ") and "decode.nonsense" in message
    assert "beam_size" in cli_error([*argv, "-d", "beam_size"], capsys)
    assert "key=value" in cli_error([*argv, "-d", "=3"], capsys)
    assert "decode.temperature" in cli_error([*argv, "--sample", "-d", "temperature=0"], capsys)
    assert "n_best" in cli_error([*argv, "--beam", "2", "--nbest", "3"], capsys)
    assert "'Z'" in cli_error([*argv, "-d", "banned=[Z]"], capsys)
    assert "--beam" in cli_error([*argv, "--beam", "0"], capsys, usage=True)
    assert "excludes --beam" in cli_error([*argv, "--sample", "--beam", "3"], capsys)
    assert "exclude each other" in cli_error(
        [*argv, "--quantize", "int8", "--precision", "bf16"], capsys
    )
    assert "cannot be banned" in cli_error([*argv, "-d", "banned=['</s>']"], capsys)
    evaluate = ["evaluate", reverse_runs["rnn"], "--src", src_file, "--ref", src_file, *CPU]
    message = cli_error([*evaluate, "-d", "x=1"], capsys)
    assert message.startswith("seq2seq evaluate: error: ") and "decode.x" in message


def test_translate_ensemble_checkpoints(
    reverse_runs: dict, foreign_runs: dict, src_file: Path, reverse_translators: dict, capsys
) -> None:
    argv = ["translate", reverse_runs["rnn"], "-i", src_file, *CPU]
    single = cli_lines(argv, capsys)
    assert single == reverse_translators["rnn"](CLI_SOURCES)
    assert cli_lines([*argv, "--checkpoint", "best", "--checkpoint", "best"], capsys) == single
    best_and_last = cli_lines([*argv, "--checkpoint", "best", "--checkpoint", "last"], capsys)
    assert len(best_and_last) == len(single)
    mixed = [*argv, "--checkpoint", "best", "--checkpoint", reverse_runs["transformer"]]
    assert len(cli_lines([*mixed, "--beam", "2"], capsys)) == len(single)
    foreign = [*argv, "--checkpoint", "best", "--checkpoint", foreign_runs["sort"]]
    message = cli_error(foreign, capsys)
    assert str(foreign_runs["sort"]) in message


def test_translate_attention_with_beam(
    reverse_runs: dict, src_file: Path, tmp_path: Path, capsys
) -> None:
    plots = tmp_path / "plots"
    argv = ["translate", reverse_runs["transformer"], "-i", src_file, *CPU, "--attention", plots]
    argv += ["--beam", "3"]
    assert len(cli_lines(argv, capsys)) == len(CLI_SOURCES)
    pngs = sorted(p.name for p in plots.glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(len(CLI_SOURCES))]
    assert all((plots / n).read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for n in pngs)


def test_evaluate_with_beam(
    reverse_runs: dict, tmp_path: Path, reverse_translators: dict, capsys
) -> None:
    src = _write_lines(tmp_path / "t.src", REVERSE_SOURCES)
    ref = _write_lines(tmp_path / "t.ref", REVERSE_TARGETS)
    hyps = tmp_path / "hyps.txt"
    run = reverse_runs["rnn"]
    argv = ["evaluate", run, "--src", src, "--ref", ref, *CPU, "--beam", "3", "--json"]
    scores = json.loads("\n".join(cli_lines([*argv, "--hyp-out", hyps], capsys)))
    assert {"bleu", "chrf"} <= set(scores)
    assert 30.0 <= scores["bleu"] <= 100.0
    beam = reverse_translators["rnn"].configure(method="beam", beam_size=3)
    assert hyps.read_text(encoding="utf-8").splitlines() == beam(REVERSE_SOURCES)
    sampled_lines = cli_lines([*argv[:-3], "--sample", "--seed", "1", "--json"], capsys)
    sampled = json.loads("\n".join(sampled_lines))
    assert 0.0 <= sampled["bleu"] <= 100.0


def test_score(reverse_runs: dict, tmp_path: Path, reverse_translators: dict, capsys) -> None:
    sources, targets = [*REVERSE_SOURCES[:8], "a b"], [*REVERSE_TARGETS[:8], ""]
    src, tgt = _write_lines(tmp_path / "s.src", sources), _write_lines(tmp_path / "s.tgt", targets)
    base = ["score", reverse_runs["rnn"], "--src", src, "--tgt", tgt, *CPU]
    lines = cli_lines(base, capsys)
    assert len(lines) == len(sources)
    expected = reverse_translators["rnn"].score(sources, targets)
    for line, target, (value, count) in zip(lines[:-1], targets[:-1], expected[:-1], strict=True):
        log_prob, tokens, per_token = line.split("\t")
        assert float(log_prob) <= 0.0
        assert int(tokens) == count == len(target.split()) + 1
        assert float(log_prob) == pytest.approx(value, abs=1e-3)
        assert float(per_token) == pytest.approx(float(log_prob) / int(tokens), abs=1e-3)
    assert lines[-1] == "nan\t0\tnan"
    out = tmp_path / "scores.txt"
    assert cli_lines([*base, "-o", out], capsys) == []
    assert out.read_text(encoding="utf-8").splitlines() == lines
    twice = ["--checkpoint", "best", "--checkpoint", "best"]
    ensemble = cli_lines([*base, *twice], capsys)
    for a, b in zip(ensemble[:-1], lines[:-1], strict=True):
        assert float(a.split("\t")[0]) == pytest.approx(float(b.split("\t")[0]), abs=2e-4)


def test_error_score_mismatched_files(reverse_runs: dict, tmp_path: Path, capsys) -> None:
    src = _write_lines(tmp_path / "three.src", ["a", "b", "c"])
    tgt = _write_lines(tmp_path / "two.tgt", ["a", "b"])
    message = cli_error(["score", reverse_runs["rnn"], "--src", src, "--tgt", tgt, *CPU], capsys)
    assert message.startswith("seq2seq score: error: ")
    assert str(src) in message and str(tgt) in message
    assert "3" in message and "2" in message


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_translate_and_score_int8_and_bf16(
    name: str, reverse_runs: dict, src_file: Path, tmp_path: Path, capsys
) -> None:
    argv = ["translate", reverse_runs[name], "-i", src_file, *CPU]
    fp32 = cli_lines(argv, capsys)
    many = _write_lines(tmp_path / "many.txt", REVERSE_SOURCES)
    int8 = cli_lines([*argv, "--quantize", "int8"], capsys)
    assert len(int8) == len(CLI_SOURCES)
    argv[3] = many
    int8_many = cli_lines([*argv, "--quantize", "int8"], capsys)
    assert agreement(int8_many, cli_lines(argv, capsys)) >= 0.8
    bf16_many = cli_lines([*argv, "--precision", "bf16"], capsys)
    assert agreement(bf16_many, cli_lines(argv, capsys)) >= 0.8
    nbest = cli_lines([*argv, "--quantize", "int8", "--beam", "3", "--nbest", "2"], capsys)
    assert len(nbest) == 80
    assert len(fp32) == len(CLI_SOURCES)
    tgt = _write_lines(tmp_path / "many.tgt", REVERSE_TARGETS)
    base = ["score", reverse_runs[name], "--src", many, "--tgt", tgt, *CPU]
    for extra in (["--quantize", "int8"], ["--precision", "bf16"]):
        lines = cli_lines([*base, *extra], capsys)
        assert len(lines) == len(REVERSE_SOURCES)
        assert all(float(line.split("\t")[0]) <= 0.0 for line in lines)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_error_int8_on_cuda(reverse_runs: dict, src_file: Path, capsys) -> None:
    argv = [
        "translate",
        reverse_runs["rnn"],
        "-i",
        src_file,
        "--device",
        "cuda",
        "--quantize",
        "int8",
    ]
    assert "int8" in cli_error(argv, capsys)


# ---------------------------------------------------------------------------- user errors


def test_error_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _write_config(tmp_path / "bad.yaml", train={"lrr": 0.1})
    message = cli_error(["train", config, "--out", tmp_path / "run"], capsys)
    assert "train.lrr" in message and "did you mean 'lr'" in message


def test_error_unknown_config_key_subprocess(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "bad.yaml", model={"celll": "gru"})
    done = subprocess.run(
        [sys.executable, "-m", "seq2seq.cli", "train", str(config), "--out", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "seq2seq train: error: unknown config key 'model.celll'; did you mean 'cell'?"
    ]
    assert not (tmp_path / "run").exists()


def test_error_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _write_config(tmp_path / "tiny.yaml")
    assert "trainlr=1" in cli_error(["train", config, "trainlr=1"], capsys)
    assert "model.dropout" in cli_error(["train", config, "model.dropout=1.5"], capsys)


def test_error_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "not found" in cli_error(["train", tmp_path / "nope.yaml"], capsys)


def test_error_invalid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("train: [1\n", encoding="utf-8")
    assert "broken.yaml" in cli_error(["train", config], capsys)


def _file_config(tmp_path: Path, src: bytes, tgt: bytes) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.src").write_bytes(src)
    (data / "train.tgt").write_bytes(tgt)
    return _write_config(tmp_path / "files.yaml", data={"task": None, "train": "data/train"})


def test_error_data_file_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _write_config(tmp_path / "c.yaml", data={"task": None, "train": "data/none"})
    message = cli_error(["train", config, "--out", tmp_path / "run"], capsys)
    assert "not found" in message and "none.src" in message


def test_error_mismatched_line_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _file_config(tmp_path, b"a b\nc d\ne f\n", b"b a\nd c\n")
    message = cli_error(["train", config, "--out", tmp_path / "run"], capsys)
    assert "3 lines" in message and "2 lines" in message


def test_error_invalid_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _file_config(tmp_path, b"a b\nc \xff d\n", b"b a\nd c\n")
    message = cli_error(["train", config, "--out", tmp_path / "run"], capsys)
    assert "train.src, line 2" in message and "UTF-8" in message


def test_error_no_training_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _write_config(tmp_path / "c.yaml", data={"task": None})
    assert "no training data" in cli_error(["train", config, "--out", tmp_path / "run"], capsys)


def test_error_train_into_existing_run(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    before = (run_dir / "last.safetensors").read_bytes()
    message = cli_error(["train", run_dir / "config.yaml", "--out", run_dir], capsys)
    assert "--resume" in message
    assert (run_dir / "last.safetensors").read_bytes() == before


def test_error_translate_not_a_run(
    tmp_path: Path, inputs: Path, capsys: pytest.CaptureFixture
) -> None:
    message = cli_error(["translate", tmp_path, "-i", inputs], capsys)
    assert "not a run directory" in message
    assert "not a run directory" in cli_error(
        ["translate", tmp_path / "missing", "-i", inputs], capsys
    )


@pytest.mark.parametrize("keep", [0, 7, 100, -1])
def test_error_truncated_checkpoint(
    run_dir: Path, inputs: Path, tmp_path: Path, keep: int, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    data = (broken / "best.safetensors").read_bytes()
    (broken / "best.safetensors").write_bytes(data[: keep if keep >= 0 else len(data) // 2])
    message = cli_error(["translate", broken, "-i", inputs], capsys)
    assert "best.safetensors" in message


def test_error_missing_vocabulary(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    (broken / "tgt_vocab.json").unlink()
    assert "tgt_vocab.json" in cli_error(["translate", broken, "-i", inputs], capsys)


def test_error_missing_checkpoint_file(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["translate", run_dir, "--checkpoint", tmp_path / "x.safetensors", "-i", inputs]
    assert "x.safetensors" in cli_error(argv, capsys)


def test_error_missing_input_file(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert "nope.txt" in cli_error(["translate", run_dir, "-i", tmp_path / "nope.txt"], capsys)


def test_error_evaluate_mismatched_lines(
    run_dir: Path, test_set: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    src, ref = test_set
    ref.write_text("c b a\n", encoding="utf-8")
    message = cli_error(["evaluate", run_dir, "--src", src, "--ref", ref], capsys)
    assert "3 lines" in message and "1" in message


def test_error_evaluate_unknown_metric(
    run_dir: Path, test_set: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    src, ref = test_set
    argv = ["evaluate", run_dir, "--src", src, "--ref", ref, "--metrics", "bleu,meteor"]
    assert "meteor" in cli_error(argv, capsys)


def test_error_output_in_missing_directory(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cli_error(["translate", run_dir, "-i", inputs, "-o", tmp_path / "no" / "out.txt"], capsys)


def test_error_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _write_config(tmp_path / "tiny.yaml")
    (tmp_path / "taken").write_text("x", encoding="utf-8")
    cli_error(["train", config, "--out", tmp_path / "taken"], capsys)


def test_error_invalid_utf8_on_stdin(
    run_dir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"a b\n\xff c\n"), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert "line 2" in cli_error(["translate", run_dir], capsys)


def test_error_checks_come_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    Seq2Seq(
        data={"task": "reverse", "task_size": 100, "tokenizer": "char"},
        model={"emb_dim": 8, "hidden_dim": 16, "dropout": 0.0, "attention": "none"},
        train={"max_steps": 4, "valid_every": 2, "batch_tokens": 200, "valid_bleu": False},
    ).fit(out=run)
    src = tmp_path / "src.txt"
    src.write_text("a b\n")
    argv = ["evaluate", run, "--src", src, "--ref", src, "--metrics", "bleu,meteor"]
    assert "meteor" in cli_error(argv, capsys)
    plots = tmp_path / "a"
    assert "no attention" in cli_error(["translate", run, "-i", src, "--attention", plots], capsys)
    assert not plots.exists()
    with pytest.raises(SystemExit) as info:
        main(["average", str(run), "--last", "0"])
    assert info.value.code == 2


def _exit_status(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """Exit status and stderr, whether main returns or argparse exits."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def test_error_unknown_device(run_dir: Path, inputs: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = _exit_status(["translate", run_dir, "-i", inputs, "--device", "foo"], capsys)
    assert code == 2 and "foo" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_error_cuda_unavailable(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, err = _exit_status(["translate", run_dir, "-i", inputs, "--device", "cuda"], capsys)
    assert code == 2 and "cuda" in err.lower()
    config = _write_config(tmp_path / "tiny.yaml")
    code, err = _exit_status(
        ["train", config, "--out", tmp_path / "r", "train.device=cuda"], capsys
    )
    assert code == 2 and "cuda" in err.lower()
