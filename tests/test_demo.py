"""The demo: its config is the shipped example, it learns the task, and it writes its outputs."""

import json
from pathlib import Path

from seq2seq.config import from_dict, load_config
from seq2seq.demo import DEMO_CONFIG, run_demo

ROOT = Path(__file__).resolve().parents[1]


def test_demo_config_is_the_shipped_example():
    assert load_config(ROOT / "examples" / "dates.yaml") == from_dict(DEMO_CONFIG)


def test_demo_learns_the_dates_and_writes_its_outputs(tmp_path, capsys):
    # The demo's own 1000 steps decide, not the clock (~90-120 s on a 2-core CPU).
    metrics = run_demo(tmp_path, max_time=1200.0)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    assert {"exact_match", "bleu", "chrf", "bleu_signature"} <= set(saved)
    assert 0.99 <= saved["exact_match"] <= 1.0
    png = (tmp_path / "attention.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    assert (tmp_path / "run" / "best.safetensors").is_file()
    assert "exact match" in capsys.readouterr().out
