"""The encoded-data cache: token ids are stored once and reused, under a key that changes
with anything that decides them (the text, the tokenizer, the vocabulary)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from seq2seq.data.cache import encode_cached, fingerprint
from seq2seq.data.corpus import ParallelText
from seq2seq.data.tokenizers import CharTokenizer, TextCodec
from seq2seq.data.vocab import Vocab


def _codec(texts: list[str]) -> TextCodec:
    tokenizer = CharTokenizer()
    return TextCodec(tokenizer, Vocab.build(tokenizer.tokenize(t) for t in texts))


def test_encoded_data_is_cached_and_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = ParallelText(["abc", "hello there"], ["cba", "ereht olleh"], "train", 0)
    codec = _codec(text.src + text.tgt)
    fresh = encode_cached(text, codec, codec, tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    with caplog.at_level(logging.INFO, logger="seq2seq"):
        again = encode_cached(text, codec, codec, tmp_path)
    assert "from the cache" in caplog.text
    assert again.src == fresh.src and again.tgt == fresh.tgt
    assert fresh.src[0] == codec.encode("abc")


def test_cache_key_changes_with_vocabulary_and_text() -> None:
    text = ParallelText(["abc"], ["cba"], "train", 0)
    codec = _codec(["abc"])
    other = _codec(["abcd"])
    changed = ParallelText(["abd"], ["cba"], "train", 0)
    assert fingerprint(text, codec, codec) != fingerprint(text, other, other)
    assert fingerprint(text, codec, codec) != fingerprint(changed, codec, codec)


def test_cache_key_separates_sentences_containing_newlines() -> None:
    codec = TextCodec(CharTokenizer(), Vocab.build([list("abc\n")]))
    one = ParallelText(["a\nb", "c"], ["a", "b"], "x", 0)
    two = ParallelText(["a", "b\nc"], ["a", "b"], "x", 0)
    assert fingerprint(one, codec, codec) != fingerprint(two, codec, codec)
