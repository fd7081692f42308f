"""The summarization recipes on the real corpora (skipped where ../shared/data is absent)."""

from pathlib import Path

import pytest

from seq2seq import Seq2Seq, load_config
from seq2seq.data.prepare import load_split
from seq2seq.inference import evaluate

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RECIPES = {  # recipe: (corpus, train pairs, valid pairs)
    "samsum/transformer.yaml": ("samsum", 14731, 818),
    "samsum/gru_copy.yaml": ("samsum", 14731, 818),
    "aeslc/transformer.yaml": ("aeslc", 14436, 1960),
}
TINY = {  # the recipe's data settings and model kind, at a size that trains in seconds
    "transformer": ["model.hidden_dim=32", "model.ff_dim=64", "model.max_positions=512"],
    "rnn": ["model.emb_dim=16", "model.hidden_dim=32"],
}


def _head(corpus: Path, n: int, out: Path) -> Path:
    """The first ``n`` valid pairs of ``corpus`` as the prefix ``out`` (a temporary file)."""
    for side in ("src", "tgt"):
        lines = (corpus / f"valid.{side}").read_text(encoding="utf-8").splitlines()[:n]
        out.with_suffix(f".{side}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def _corpus(recipe: str) -> Path:
    corpus = DATA / RECIPES[recipe][0]
    if not (corpus / "valid.src").is_file():
        pytest.skip(f"{corpus.name} not found at {corpus} (../shared absent)")
    return corpus


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_reads_the_shared_corpus(recipe: str) -> None:
    _corpus(recipe)
    cfg = load_config(ROOT / "examples" / recipe)
    _, train, valid = RECIPES[recipe]
    for split, count in (("train", train), ("valid", valid)):
        text = load_split(cfg.data, split)
        assert len(text.src) == len(text.tgt) == count
    assert cfg.model.copy and cfg.data.joint_vocab and cfg.data.max_src_len
    assert cfg.train.early_stop_metric == "rouge" and cfg.train.max_time == 3600


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_trains_a_few_steps_and_summarizes(recipe: str, tmp_path: Path) -> None:
    corpus = _corpus(recipe)
    cfg = load_config(ROOT / "examples" / recipe)
    overrides = [  # 300 valid pairs as training data, 40 to validate, a tiny model, 3 steps
        f"data.train={_head(corpus, 300, tmp_path / 'train')}",
        f"data.valid={_head(corpus, 40, tmp_path / 'valid')}",
        "data.vocab_size=500",
        *TINY[cfg.model.arch],
        "train.max_steps=3",
        "train.batch_tokens=2000",
        "train.valid_every=3",
        "train.max_time=null",
        "decode.max_len_b=6",  # the untrained model's summaries (validation decodes them all)
    ]
    model = Seq2Seq(load_config(ROOT / "examples" / recipe, overrides))
    history = model.fit(out=tmp_path / "run")
    assert {"valid_rouge1", "valid_rouge2", "valid_rougeL", "valid_rouge"} <= set(history[-1])
    sources = load_split(model.config.data, "valid").src[:3]
    log = (tmp_path / "run" / "train.log").read_text(encoding="utf-8")
    assert f"sources to {cfg.data.max_src_len} tokens (data.max_src_len)" in log  # cut, kept
    summaries = model.predict([*sources, ""], method="beam", beam_size=2)
    assert len(summaries) == 4 and summaries[3] == ""  # an empty source: an empty summary
    assert all(len(s.split()) <= 6 for s in summaries)


def test_aeslc_scores_against_one_reference_or_the_best_of_four(tmp_path: Path) -> None:
    corpus = _corpus("aeslc/transformer.yaml")
    recipe = ROOT / "examples" / "aeslc" / "transformer.yaml"
    overrides = [
        f"data.train={_head(corpus, 300, tmp_path / 'train')}",
        "data.valid=null",
        "data.vocab_size=500",
        *TINY["transformer"],
        "train.max_steps=2",
        "train.batch_tokens=2000",
        "train.max_time=null",
    ]
    model = Seq2Seq(load_config(recipe, overrides))
    model.fit(out=tmp_path / "run")
    n = 40
    sources = (corpus / "valid.src").read_text(encoding="utf-8").splitlines()[:n]
    refs = [
        (corpus / f"valid.{name}").read_text(encoding="utf-8").splitlines()[:n]
        for name in ("tgt", "ann0", "ann1", "ann2")
    ]
    one = evaluate(model.translator, sources, refs[0], ["rouge"])
    four = evaluate(model.translator, sources, refs, ["rouge"])
    assert one.hypotheses == four.hypotheses
    assert four.scores["rouge1"] >= one.scores["rouge1"]  # the best of four is never worse
    assert "nrefs:4" in four.scores["rouge_signature"]
