"""Edge cases: contradictory settings, long inputs, reused run directories, CLI checks."""

from pathlib import Path

import pytest
import torch

from seq2seq import Seq2Seq
from seq2seq.cli import main
from seq2seq.config import ModelConfig, from_dict
from seq2seq.data.cache import fingerprint
from seq2seq.data.corpus import ParallelText
from seq2seq.data.tokenizers import CharTokenizer, TextCodec
from seq2seq.data.vocab import Vocab
from seq2seq.errors import ConfigError
from seq2seq.models.build import build_model
from seq2seq.search import Rules, greedy

TINY = {"emb_dim": 8, "hidden_dim": 16, "dropout": 0.0}
TRAIN = {"max_steps": 4, "valid_every": 2, "batch_tokens": 200, "valid_bleu": False}


@pytest.mark.parametrize(
    "raw, key",
    [
        (
            {"model": {"arch": "transformer", "max_positions": 50}, "data": {"max_len": 60}},
            "model.max_positions",
        ),
        ({"train": {"early_stop_metric": "bleu", "valid_bleu": False}}, "train.valid_bleu"),
        ({"data": {"tokenizer": "char", "sp_model": "/x.model"}}, "data.sp_model"),
        ({"train": {"schedule": "noam", "warmup_steps": 0}}, "train.warmup_steps"),
    ],
)
def test_contradictory_settings_are_errors(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(raw)


def test_greedy_never_runs_past_the_transformers_positions():
    cfg = ModelConfig(arch="transformer", hidden_dim=16, ff_dim=32, max_positions=12, dropout=0.0)
    model = build_model(cfg, 20, 20).eval()
    src = torch.randint(3, 20, (2, 11))
    hyps = greedy(model, src, Rules(bos=1, eos=2, max_len_a=3.0, max_len_b=50))
    assert all(len(h.tokens) <= 12 for h in hyps)  # inputs BOS, y1..y11 fill 12 positions


def test_transformer_step_leaves_its_input_state_usable():
    cfg = ModelConfig(arch="transformer", hidden_dim=16, ff_dim=32, dropout=0.0)
    model = build_model(cfg, 20, 20).eval()
    state = model.init_state(model.encode(torch.randint(3, 20, (2, 5))))
    prev = torch.tensor([1, 1])
    first, _, _ = model.step(prev, state)
    again, _, _ = model.step(prev, state)  # same input state: same output
    assert torch.equal(first, again)


def test_cache_key_separates_sentences_containing_newlines():
    codec = TextCodec(CharTokenizer(), Vocab.build([list("abc\n")]))
    one = ParallelText(["a\nb", "c"], ["a", "b"], "x", 0)
    two = ParallelText(["a", "b\nc"], ["a", "b"], "x", 0)
    assert fingerprint(one, codec, codec) != fingerprint(two, codec, codec)


def _fit(out: Path, **model) -> Seq2Seq:
    seq = Seq2Seq(
        data={"task": "reverse", "task_size": 100, "tokenizer": "char"},
        model={**TINY, **model},
        train=TRAIN,
    )
    seq.fit(out=out)
    return seq


def test_fit_refuses_a_directory_holding_a_run(tmp_path):
    _fit(tmp_path)
    with pytest.raises(ConfigError, match="already holds a training run"):
        _fit(tmp_path)


def test_cli_checks_before_working(tmp_path, capsys):
    run = tmp_path / "run"
    _fit(run, attention="none")
    src = tmp_path / "src.txt"
    src.write_text("a b\n")
    assert (
        main(
            ["evaluate", str(run), "--src", str(src), "--ref", str(src), "--metrics", "bleu,meteor"]
        )
        == 2
    )
    assert "meteor" in capsys.readouterr().err
    assert main(["translate", str(run), "-i", str(src), "--attention", str(tmp_path / "a")]) == 2
    assert "no attention" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["average", str(run), "--last", "0"])
