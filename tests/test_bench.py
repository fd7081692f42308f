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
