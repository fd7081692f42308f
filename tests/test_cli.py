"""The ``seq2seq`` command end to end: train, translate and evaluate on toy data in a temp dir.

One training run goes through a real subprocess (the user's console path); the other
commands call ``seq2seq.cli.main`` in-process, which is the same code without the
interpreter start-up. User errors must exit with status 2 and a one-line message.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from seq2seq.checkpoint import load_checkpoint
from seq2seq.cli import main
from seq2seq.config import load_config

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


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``seq2seq ARGV`` in-process: (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _fails(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run a command that must fail as a user error; return its one-line message."""
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"seq2seq {argv[0]}: error: ")
    return errors[0]


@pytest.fixture(autouse=True)
def _one_thread():
    # In-process training sets torch's (process-global) thread count from the config.
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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
    code, stdout, err = _run(
        ["train", config, "--out", out, "train.max_steps=4", "train.valid_every=2"], capsys
    )
    assert code == 0, err
    assert f"run directory: {out}" in stdout
    assert load_config(out / "config.yaml").train.max_steps == 4
    code, _, err = _run(["train", config, "train.max_steps=6", "--out", out, "--resume"], capsys)
    assert code == 0, err
    progress = load_checkpoint(out / "last.safetensors").trainer["progress"]
    assert progress["step"] == 6
    assert [r["step"] for r in progress["history"]] == [2, 4, 6]


def test_train_default_out_is_runs_config_stem(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _write_config(tmp_path / "named.yaml", train={"max_steps": 2, "valid_every": 2})
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["train", config], capsys)
    assert code == 0, err
    assert (tmp_path / "runs" / "named" / "last.safetensors").is_file()


# ---------------------------------------------------------------------------- translate


def test_translate_file(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.txt"
    code, stdout, err = _run(["translate", run_dir, "-i", inputs, "-o", out], capsys)
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
    assert _run(["translate", run_dir, "-i", inputs, "-o", out], capsys)[0] == 0
    data = "".join(s + "\r\n" for s in SENTENCES).encode("utf-8")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    code, stdout, err = _run(["translate", run_dir], capsys)
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
    code, _, err = _run(
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
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    assert len(_lines(out)) == len(SENTENCES)
    assert len(list((tmp_path / "plots").glob("*.png"))) >= len([s for s in SENTENCES if s])


def test_translate_explicit_checkpoint_path(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    by_name, by_path = tmp_path / "a.txt", tmp_path / "b.txt"
    assert _run(["translate", run_dir, "-i", inputs, "-o", by_name], capsys)[0] == 0
    best = run_dir / "best.safetensors"
    argv = ["translate", run_dir, "--checkpoint", best, "-i", inputs, "-o", by_path]
    assert _run(argv, capsys)[0] == 0
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
    code, stdout, err = _run([*argv, "--hyp-out", hyps], capsys)
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
    code, stdout, err = _run([*argv, "--metrics", "bleu,chrf,rouge,exact"], capsys)
    assert code == 0, err
    scores = json.loads(stdout)
    expected = {"bleu", "bleu_signature", "chrf", "chrf_signature", "rouge1", "rouge2"}
    assert expected | {"rougeL", "exact_match"} == set(scores)
    assert 0.0 <= scores["exact_match"] <= 1.0
    assert 0.0 <= scores["bleu"] <= 100.0
    code, stdout, _ = _run(argv, capsys)  # the default metrics
    assert code == 0 and {"bleu", "chrf"} <= set(json.loads(stdout))


# ---------------------------------------------------------------------------- user errors


def test_error_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _write_config(tmp_path / "bad.yaml", train={"lrr": 0.1})
    message = _fails(["train", config, "--out", tmp_path / "run"], capsys)
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
    assert "trainlr=1" in _fails(["train", config, "trainlr=1"], capsys)
    assert "model.dropout" in _fails(["train", config, "model.dropout=1.5"], capsys)


def test_error_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert "not found" in _fails(["train", tmp_path / "nope.yaml"], capsys)


def test_error_invalid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("train: [1\n", encoding="utf-8")
    assert "broken.yaml" in _fails(["train", config], capsys)


def _file_config(tmp_path: Path, src: bytes, tgt: bytes) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.src").write_bytes(src)
    (data / "train.tgt").write_bytes(tgt)
    return _write_config(tmp_path / "files.yaml", data={"task": None, "train": "data/train"})


def test_error_data_file_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _write_config(tmp_path / "c.yaml", data={"task": None, "train": "data/none"})
    message = _fails(["train", config, "--out", tmp_path / "run"], capsys)
    assert "not found" in message and "none.src" in message


def test_error_mismatched_line_counts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _file_config(tmp_path, b"a b\nc d\ne f\n", b"b a\nd c\n")
    message = _fails(["train", config, "--out", tmp_path / "run"], capsys)
    assert "3 lines" in message and "2 lines" in message


def test_error_invalid_utf8(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _file_config(tmp_path, b"a b\nc \xff d\n", b"b a\nd c\n")
    message = _fails(["train", config, "--out", tmp_path / "run"], capsys)
    assert "train.src, line 2" in message and "UTF-8" in message


def test_error_no_training_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _write_config(tmp_path / "c.yaml", data={"task": None})
    assert "no training data" in _fails(["train", config, "--out", tmp_path / "run"], capsys)


def test_error_train_into_existing_run(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    before = (run_dir / "last.safetensors").read_bytes()
    message = _fails(["train", run_dir / "config.yaml", "--out", run_dir], capsys)
    assert "--resume" in message
    assert (run_dir / "last.safetensors").read_bytes() == before


def test_error_translate_not_a_run(
    tmp_path: Path, inputs: Path, capsys: pytest.CaptureFixture
) -> None:
    message = _fails(["translate", tmp_path, "-i", inputs], capsys)
    assert "not a run directory" in message
    assert "not a run directory" in _fails(
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
    message = _fails(["translate", broken, "-i", inputs], capsys)
    assert "best.safetensors" in message


def test_error_missing_vocabulary(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    (broken / "tgt_vocab.json").unlink()
    assert "tgt_vocab.json" in _fails(["translate", broken, "-i", inputs], capsys)


def test_error_missing_checkpoint_file(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["translate", run_dir, "--checkpoint", tmp_path / "x.safetensors", "-i", inputs]
    assert "x.safetensors" in _fails(argv, capsys)


def test_error_missing_input_file(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert "nope.txt" in _fails(["translate", run_dir, "-i", tmp_path / "nope.txt"], capsys)


def test_error_evaluate_mismatched_lines(
    run_dir: Path, test_set: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    src, ref = test_set
    ref.write_text("c b a\n", encoding="utf-8")
    message = _fails(["evaluate", run_dir, "--src", src, "--ref", ref], capsys)
    assert "3 lines" in message and "1" in message


def test_error_evaluate_unknown_metric(
    run_dir: Path, test_set: tuple[Path, Path], capsys: pytest.CaptureFixture
) -> None:
    src, ref = test_set
    argv = ["evaluate", run_dir, "--src", src, "--ref", ref, "--metrics", "bleu,meteor"]
    assert "meteor" in _fails(argv, capsys)


def test_error_output_in_missing_directory(
    run_dir: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _fails(["translate", run_dir, "-i", inputs, "-o", tmp_path / "no" / "out.txt"], capsys)


def test_error_out_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = _write_config(tmp_path / "tiny.yaml")
    (tmp_path / "taken").write_text("x", encoding="utf-8")
    _fails(["train", config, "--out", tmp_path / "taken"], capsys)


def test_error_invalid_utf8_on_stdin(
    run_dir: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"a b\n\xff c\n"), encoding="utf-8", errors="strict")
    monkeypatch.setattr(sys, "stdin", stdin)
    assert "line 2" in _fails(["translate", run_dir], capsys)


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
