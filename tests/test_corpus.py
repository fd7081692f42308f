"""Tests for seq2seq.data.corpus: real files in a temp dir, one per format and error."""

from __future__ import annotations

import gzip
import json
import logging
import re
from pathlib import Path

import pytest

from seq2seq.data.corpus import ParallelText, corpus_files, read_lines, read_parallel
from seq2seq.errors import DataError


def _write(path: Path, text: str | bytes) -> Path:
    """Write ``text`` (UTF-8 if a str) to ``path``, gzipped if it ends in ``.gz``."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as stream:
            stream.write(data)
    else:
        path.write_bytes(data)
    return path


def test_plain_pair(tmp_path: Path) -> None:
    _write(tmp_path / "train.de", "Hallo Welt\r\n  Guten Tag  \n")
    _write(tmp_path / "train.en", "hello world\r\ngood day")
    corpus = read_parallel(tmp_path / "train", "de", "en", name="train")
    assert corpus == ParallelText(
        src=["Hallo Welt", "Guten Tag"],
        tgt=["hello world", "good day"],
        name=f"train ({tmp_path / 'train.de'}, {tmp_path / 'train.en'})",
        skipped_empty=0,
    )


def test_gz_pair_and_mixed(tmp_path: Path) -> None:
    _write(tmp_path / "c.de.gz", "eins\nzwei\n")
    _write(tmp_path / "c.en", "one\ntwo\n")
    assert corpus_files(tmp_path / "c", "de", "en") == [tmp_path / "c.de.gz", tmp_path / "c.en"]
    corpus = read_parallel(str(tmp_path / "c"), "de", "en")
    assert (corpus.src, corpus.tgt) == (["eins", "zwei"], ["one", "two"])


def test_unicode_line_separator_does_not_split(tmp_path: Path) -> None:
    _write(tmp_path / "u.de", "a\u2028b\x85c\nd\n")
    _write(tmp_path / "u.en", "x\ny\n")
    assert read_parallel(tmp_path / "u", "de", "en").src == ["a\u2028b\x85c", "d"]


def test_tsv(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.tsv", "Hallo\thello\n Tschüss \t bye \r\n")
    assert corpus_files(path, "de", "en") == [path]
    corpus = read_parallel(path, "de", "en", name="dev")
    assert (corpus.src, corpus.tgt) == (["Hallo", "Tschüss"], ["hello", "bye"])
    assert corpus.name == f"dev ({path})"


def test_tsv_gz(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.tsv.gz", "a\tb\n")
    assert read_parallel(path, "x", "y").tgt == ["b"]


def test_jsonl(tmp_path: Path) -> None:
    lines = [
        json.dumps({"src": "Hallo", "tgt": "hello", "id": 3}),
        json.dumps({"src": "a\tb", "tgt": "c"}),
    ]
    path = _write(tmp_path / "data.jsonl", "\n".join(lines) + "\n")
    corpus = read_parallel(path, "de", "en")
    assert (corpus.src, corpus.tgt) == (["Hallo", "a\tb"], ["hello", "c"])


def test_mismatched_line_counts_names_both_files_and_counts(tmp_path: Path) -> None:
    src = _write(tmp_path / "m.de", "a\nb\nc\n")
    tgt = _write(tmp_path / "m.en", "x\ny\n")
    with pytest.raises(DataError) as info:
        read_parallel(tmp_path / "m", "de", "en")
    message = str(info.value)
    assert str(src) in message and str(tgt) in message
    assert "3 lines" in message and "2 lines" in message


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path / "bad.de", "a\nb\nc\n")
    bad = _write(tmp_path / "bad.en", b"x\ny\nok \xff\xfe here\n")
    with pytest.raises(DataError, match="invalid UTF-8") as info:
        read_parallel(tmp_path / "bad", "de", "en")
    assert f"{bad}, line 3:" in str(info.value)


def test_invalid_utf8_in_gz(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.txt.gz", b"fine\n\xc3\x28\n")
    with pytest.raises(DataError, match=r"line 2: invalid UTF-8") as info:
        read_lines(bad)
    assert str(bad) in str(info.value)


def test_empty_and_whitespace_pairs_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path / "e.de", "a\n\n  \nb\nc\n")
    _write(tmp_path / "e.en", "x\ny\nz\n\t \nw\n")
    with caplog.at_level(logging.WARNING, logger="seq2seq"):
        corpus = read_parallel(tmp_path / "e", "de", "en", name="train")
    assert (corpus.src, corpus.tgt, corpus.skipped_empty) == (["a", "c"], ["x", "w"], 3)
    assert "skipped 3" in caplog.text and "train" in caplog.text


def test_all_empty_corpus_is_an_error(tmp_path: Path) -> None:
    _write(tmp_path / "z.de", "\n \n")
    _write(tmp_path / "z.en", "a\n\n")
    with pytest.raises(DataError, match="no usable sentence pairs in train"):
        read_parallel(tmp_path / "z", "de", "en", name="train")


def test_empty_files_are_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.tsv", "")
    with pytest.raises(DataError, match="no usable sentence pairs"):
        read_parallel(path, "de", "en")


def test_missing_target_file_names_paths_tried(tmp_path: Path) -> None:
    _write(tmp_path / "p.de", "a\n")
    with pytest.raises(DataError) as info:
        read_parallel(tmp_path / "p", "de", "en")
    message = str(info.value)
    assert str(tmp_path / "p.en") in message and str(tmp_path / "p.en.gz") in message
    assert str(tmp_path / "p.de") not in message


def test_missing_tsv_and_jsonl(tmp_path: Path) -> None:
    for name in ("nope.tsv", "nope.jsonl.gz"):
        with pytest.raises(DataError, match="not found") as info:
            read_parallel(tmp_path / name, "de", "en")
        assert str(tmp_path / name) in str(info.value)


def test_bad_tsv_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.tsv", "a\tb\nno tab here\n")
    with pytest.raises(DataError, match="line 2: expected 2 tab-separated columns") as info:
        read_parallel(path, "de", "en")
    assert str(path) in str(info.value)
    path = _write(tmp_path / "d2.tsv", "a\tb\tc\n")
    with pytest.raises(DataError, match=r"line 1: .*found 3"):
        read_parallel(path, "de", "en")


@pytest.mark.parametrize(
    "bad_line",
    ["{not json", '["src", "tgt"]', '{"src": "a"}', '{"src": "a", "tgt": 3}'],
)
def test_bad_jsonl_line(tmp_path: Path, bad_line: str) -> None:
    path = _write(tmp_path / "d.jsonl", '{"src": "a", "tgt": "b"}\n' + bad_line + "\n")
    with pytest.raises(DataError, match="line 2:") as info:
        read_parallel(path, "de", "en")
    assert str(path) in str(info.value)


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.tsv.gz", b"not gzip at all\n")
    with pytest.raises(DataError) as info:
        read_parallel(path, "de", "en")
    assert str(path) in str(info.value)


def test_read_lines_keeps_empty_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "in.txt", "first\n\n  spaced  \r\n\nlast")
    assert read_lines(path) == ["first", "", "  spaced  ", "", "last"]
    assert read_lines(_write(tmp_path / "in.txt.gz", "a\n\nb\n")) == ["a", "", "b"]
    assert read_lines(_write(tmp_path / "none.txt", "")) == []


def test_read_lines_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as info:
        read_lines(tmp_path / "absent.txt")
    assert str(tmp_path / "absent.txt") in str(info.value)


def test_read_lines_directory_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(f"cannot read {tmp_path}")):
        read_lines(tmp_path)


def test_utf8_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = _write(tmp_path / "bom.txt", "\ufeffa\n\ufeffb\n")
    assert read_lines(path) == ["a", "\ufeffb"]
