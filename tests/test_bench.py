"""The benchmark scripts' command lines (their figures are never asserted)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_speed_makes_the_run_dir_it_is_given(tmp_path, capsys) -> None:
    run_dir = tmp_path / "not" / "there" / "yet"
    argv = [str(ROOT / "examples" / "dates.yaml"), "data.task_size=200", "train.threads=1"]
    argv += ["--steps", "2", "--warmup", "1", "--json", "--run-dir", str(run_dir)]
    assert _script("train_speed").main(argv) == 0
    assert json.loads(capsys.readouterr().out)["tgt_tok_per_s"] > 0
    assert (run_dir / "config.yaml").is_file()  # the tokenizers and config stay there


def test_train_speed_names_a_run_dir_it_cannot_make(tmp_path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    argv = [str(ROOT / "examples" / "dates.yaml"), "--run-dir", str(blocker / "run")]
    with pytest.raises(SystemExit) as exit_:
        _script("train_speed").main(argv)
    assert exit_.value.code == 2
    assert f"--run-dir: cannot create {blocker / 'run'}" in capsys.readouterr().err


@pytest.mark.parametrize(
    "script", ["compress", "constraints", "ddp_speed", "decode_speed", "serve_load"]
)
def test_a_missing_run_is_one_line_naming_it_not_a_traceback(script, tmp_path) -> None:
    missing = tmp_path / "no-run"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"{script}.py: error: ")
    assert str(missing) in done.stderr


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("decode_speed", ["--threads", "0"], "argument --threads: must be at least 1, got 0"),
        ("decode_speed", ["--src", "x.de"], "--src and --ref go together"),
        ("constraints", ["--ref", "x.en"], "--src and --ref go together"),
        ("serve_load", ["--clients", "0"], "argument --clients: must be at least 1, got 0"),
        ("compress", ["--student-time", "0"], "argument --student-time: must be at least 1.0"),
    ],
)
def test_bad_arguments_are_usage_errors_before_any_work(script, args, message, tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{script}.py"), str(tmp_path / "run"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"{script}.py: error: {message}" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("script", ["train_speed", "ddp_speed", "stream_memory"])
def test_step_and_line_counts_must_be_positive(script, capsys) -> None:
    config = [] if script == "stream_memory" else [str(ROOT / "examples" / "dates.yaml")]
    flag = "--lines" if script == "stream_memory" else "--steps"
    with pytest.raises(SystemExit) as exit_:
        _script(script).main([*config, flag, "0"])
    assert exit_.value.code == 2
    assert f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err


def test_lead_names_a_missing_file(tmp_path) -> None:
    missing = tmp_path / "valid.src"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "lead.py"), str(missing), "--ref", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"lead.py: error: file not found: {missing}")


def test_a_count_that_is_not_a_number_is_named_by_its_type(capsys) -> None:
    with pytest.raises(SystemExit):
        _script("train_speed").main([str(ROOT / "examples" / "dates.yaml"), "--steps", "two"])
    assert "argument --steps: invalid int value: 'two'" in capsys.readouterr().err
