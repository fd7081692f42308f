"""The Multi30k recipe on the real corpus (skipped where ../shared/data is absent)."""

from pathlib import Path

import pytest

from seq2seq import Seq2Seq, load_config
from seq2seq.data.prepare import load_split

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "multi30k"
RECIPE = ROOT / "examples" / "multi30k" / "gru_attention_de_en.yaml"

pytestmark = pytest.mark.skipif(
    not (DATA / "val.de").is_file(), reason=f"Multi30k not found at {DATA} (../shared absent)"
)


def test_recipe_reads_the_shared_corpus():
    cfg = load_config(RECIPE)
    for split, count in (("train", 29000), ("valid", 1014), ("test", 1000)):
        text = load_split(cfg.data, split)
        assert len(text.src) == len(text.tgt) == count


def test_recipe_trains_a_few_steps(tmp_path):
    # The recipe's data and tokenizer settings, on the small validation split and a tiny model.
    overrides = [
        f"data.train={DATA / 'val'}",
        f"data.valid={DATA / 'val'}",
        "data.vocab_size=300",
        "model.emb_dim=16",
        "model.hidden_dim=16",
        "train.max_steps=3",
        "train.batch_tokens=600",
        "train.valid_bleu=false",
        "train.early_stop_metric=loss",
        "train.max_time=null",
    ]
    model = Seq2Seq(load_config(RECIPE, overrides))
    model.fit(out=tmp_path)
    assert (tmp_path / "src.model").is_file() and (tmp_path / "tgt.model").is_file()
    out = model.predict(["Ein Mann fährt Fahrrad."])
    assert len(out) == 1 and isinstance(out[0], str)
