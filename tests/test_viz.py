"""Tests for seq2seq.viz: real PNG files written to a temp dir."""

import numpy as np
import pytest
import torch

from seq2seq import viz

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes


def _attention(n_out, n_src, seed=0):
    """Row-stochastic weights, like a softmax over the source."""
    logits = torch.randn(n_out, n_src, generator=torch.Generator().manual_seed(seed))
    return logits.softmax(dim=-1)


def test_plot_attention_writes_png_with_awkward_tokens(tmp_path):
    src = ["The", " ", "price", "is", "$5", "$", "."]
    out = ["Le", "prix", "est", "5$", "</s>"]
    path = viz.plot_attention(
        _attention(5, 7), src, out, tmp_path / "nested" / "attn.png", title="from $5 to $10"
    )
    assert path == tmp_path / "nested" / "attn.png"
    _assert_png(path)


def test_plot_attention_accepts_numpy_and_bfloat16(tmp_path):
    weights = _attention(2, 3)
    viz.plot_attention(weights.numpy(), ["a", "b", "c"], ["x", "y"], tmp_path / "np.png")
    viz.plot_attention(weights.bfloat16(), ["a", "b", "c"], ["x", "y"], tmp_path / "bf.png")
    _assert_png(tmp_path / "np.png", min_bytes=1_000)
    _assert_png(tmp_path / "bf.png", min_bytes=1_000)


def test_plot_attention_shape_mismatch_names_both_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"\(5, 7\).*\(5, 6\)"):
        viz.plot_attention(_attention(5, 7), list("abcdef"), list("vwxyz"), tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_plot_attention_rejects_non_matrix(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        viz.plot_attention(np.ones(3), ["a", "b", "c"], ["x"], tmp_path / "a.png")


def test_label_makes_whitespace_visible_and_escapes_dollar():
    assert viz._label(" ") == "␣"
    assert viz._label("a\tb\n") == "a⇥b↵"
    assert viz._label("$5") == r"\$5"
    assert viz._label("") == "∅"


def test_heatmap_size_is_clamped():
    assert viz._heatmap_size(1, 1) == (viz._MIN_INCHES, viz._MIN_INCHES)
    assert viz._heatmap_size(1000, 1000) == (viz._MAX_INCHES, viz._MAX_INCHES)
    small, large = viz._heatmap_size(5, 5), viz._heatmap_size(20, 20)
    assert large[0] > small[0] and large[1] > small[1]


def test_plot_curves_writes_png(tmp_path):
    history = [
        {"step": 100, "train_loss": 3.1},
        {"step": 200, "train_loss": 2.5, "valid_loss": 2.6, "valid_bleu": 8.0},
        {"step": 300, "train_loss": 2.1},
        {"step": 400, "train_loss": 1.9, "valid_loss": 2.2, "valid_bleu": 14.5},
    ]
    _assert_png(viz.plot_curves(history, tmp_path / "curves" / "c.png"))


def test_plot_curves_without_bleu(tmp_path):
    history = [{"train_loss": 3.0}, {"train_loss": 2.0}]
    _assert_png(viz.plot_curves(history, tmp_path / "c.png"))


def test_plot_curves_with_nothing_to_plot(tmp_path):
    with pytest.raises(ValueError, match="train_loss"):
        viz.plot_curves([{"step": 1, "lr": 0.1}], tmp_path / "c.png")
