"""Tests for seq2seq.data.vocab."""

import re
from pathlib import Path

import pytest

from seq2seq.data.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab
from seq2seq.errors import CheckpointError


def test_specials_come_first_with_fixed_ids():
    vocab = Vocab.build([["a"]])
    assert vocab.pieces[:4] == SPECIALS
    assert [vocab.index(s) for s in SPECIALS] == [PAD, BOS, EOS, UNK]


def test_build_orders_by_frequency_then_piece():
    vocab = Vocab.build([["b", "a", "c", "c"], ["b", "a", "d", "c"]])
    assert vocab.pieces[4:] == ("c", "a", "b", "d")


def test_build_is_independent_of_sentence_order():
    sentences = [["x", "y"], ["z", "y"], ["w"]]
    assert Vocab.build(sentences) == Vocab.build(list(reversed(sentences)))


def test_build_min_freq():
    vocab = Vocab.build([["a", "a", "b"]], min_freq=2)
    assert vocab.pieces[4:] == ("a",)


def test_build_max_size_counts_pieces_besides_specials():
    vocab = Vocab.build([["a", "a", "a", "b", "b", "c"]], max_size=2)
    assert vocab.pieces[4:] == ("a", "b")
    assert len(vocab) == len(SPECIALS) + 2


def test_build_skips_specials_in_text():
    vocab = Vocab.build([["<unk>", "a", "</s>"]])
    assert vocab.pieces == (*SPECIALS, "a")


@pytest.mark.parametrize("kwargs", [{"max_size": -1}, {"min_freq": 0}])
def test_build_rejects_bad_limits(kwargs):
    with pytest.raises(ValueError):
        Vocab.build([["a"]], **kwargs)


def test_init_validates_specials_and_repeats():
    with pytest.raises(ValueError, match="start with"):
        Vocab(["a", "b"])
    with pytest.raises(ValueError, match="repeat"):
        Vocab([*SPECIALS, "a", "a"])


def test_from_pieces_keeps_order_and_skips_specials():
    vocab = Vocab.from_pieces(["z", "<unk>", "a", "<s>", "m", "a"])
    assert vocab.pieces == (*SPECIALS, "z", "a", "m")


def test_encode_maps_unknown_to_unk():
    vocab = Vocab.build([["a", "b"]])
    assert vocab.encode(["a", "zzz", "b"]) == [vocab.index("a"), UNK, vocab.index("b")]
    assert vocab.index("zzz") == UNK
    assert vocab.piece(vocab.index("b")) == "b"


def test_decode_stops_at_eos_and_drops_pad_and_bos():
    vocab = Vocab.build([["a", "b"]])
    a, b = vocab.index("a"), vocab.index("b")
    assert vocab.decode([BOS, a, PAD, b, UNK, EOS, a, PAD]) == ["a", "b", "<unk>"]
    assert vocab.decode([]) == []


def test_decode_rejects_ids_outside_vocab():
    vocab = Vocab.build([["a"]])
    with pytest.raises(IndexError):
        vocab.decode([len(vocab)])
    with pytest.raises(IndexError):
        vocab.decode([-1])


def test_save_load_round_trip_keeps_odd_pieces(tmp_path: Path):
    vocab = Vocab.from_pieces([" ", "\n", "\t", "über", "日本", "▁x", '"', "\\", "\u200b"])
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert Vocab.load(path) == vocab
    assert [p.name for p in tmp_path.iterdir()] == ["vocab.json"]  # no temp file left behind


def test_save_overwrites(tmp_path: Path):
    path = tmp_path / "vocab.json"
    Vocab.from_pieces(["a"]).save(path)
    Vocab.from_pieces(["b"]).save(path)
    assert Vocab.load(path).pieces[4:] == ("b",)


def test_load_missing_file_names_path(tmp_path: Path):
    path = tmp_path / "missing.json"
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        Vocab.load(path)


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"a": 1}', b"[1, 2]", b'["a", "b"]', b"\xff\xfe\x00", b""],
    ids=["not-json", "not-list", "not-strings", "no-specials", "bad-utf8", "empty"],
)
def test_load_corrupt_file_names_path(tmp_path: Path, content: bytes):
    path = tmp_path / "vocab.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        Vocab.load(path)
