"""Tests for seq2seq.data.tokenizers."""

import pickle
import random
import re
from pathlib import Path

import pytest

from seq2seq.data.tokenizers import (
    TOKENIZERS,
    CharTokenizer,
    SentencePieceTokenizer,
    TextCodec,
    WordTokenizer,
    load_tokenizer,
    train_tokenizer,
)
from seq2seq.data.vocab import BOS, EOS, PAD, UNK, Vocab
from seq2seq.errors import CheckpointError, DataError

PRETRAINED = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "spm8k.model"
TEXTS = [
    "A man rides a bike.",
    "Ein Mann fährt Fahrrad über die Brücke.",
    "x  y",
    "naïve café, 42!",
]


def make_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Returns ``n`` varied sentences over a small English/German vocabulary."""
    rng = random.Random(seed)
    subjects = ["a man", "the woman", "two dogs", "ein Mann", "die Frau", "zwei Hunde", "a child"]
    verbs = ["rides", "walks", "sees", "fährt", "läuft", "sieht", "jumps over", "plays with"]
    objects = ["a bike", "the street", "a red ball", "das Fahrrad", "die Straße", "über Brücken"]
    tails = ["", " today", " in the park", " im Park", " quickly", ", naïve café"]
    sentences = []
    for _ in range(n):
        sentence = f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}"
        sentence += rng.choice(tails) + rng.choice([".", "!", "?", f" {rng.randint(0, 99)}."])
        sentences.append(sentence[0].upper() + sentence[1:])
    return sentences


CORPUS = make_corpus()


def train_sp(directory: Path, model_type: str = "bpe", name: str = "src") -> SentencePieceTokenizer:
    tokenizer = train_tokenizer(
        "sentencepiece", CORPUS, directory / f"{name}.model", 150, model_type
    )
    assert isinstance(tokenizer, SentencePieceTokenizer)
    return tokenizer


@pytest.mark.parametrize("text", TEXTS)
def test_char_round_trip_keeps_spaces(text):
    tokenizer = CharTokenizer()
    assert tokenizer.detokenize(tokenizer.tokenize(text)) == text
    assert tokenizer.tokenize("a b") == ["a", " ", "b"]


def test_word_round_trip():
    tokenizer = WordTokenizer()
    assert tokenizer.tokenize(" A man  rides.\n") == ["A", "man", "rides."]
    for text in TEXTS[:2]:
        assert tokenizer.detokenize(tokenizer.tokenize(text)) == text


@pytest.mark.parametrize("kind", ["char", "word"])
def test_simple_kinds_train_load_and_save_nothing(tmp_path: Path, kind: str):
    tokenizer = train_tokenizer(kind, CORPUS, tmp_path / "src.model")
    tokenizer.save(tmp_path / "src.model")
    assert tokenizer.kind == kind
    assert tokenizer.vocab_pieces() is None
    assert type(load_tokenizer(kind)) is type(tokenizer)
    assert list(tmp_path.iterdir()) == []


def test_unknown_kind_lists_tokenizers(tmp_path: Path):
    with pytest.raises(ValueError, match=re.escape(str(TOKENIZERS))):
        train_tokenizer("bytes", CORPUS, tmp_path / "src.model")
    with pytest.raises(ValueError, match=re.escape(str(TOKENIZERS))):
        load_tokenizer("bytes")


def test_model_file_is_only_for_sentencepiece(tmp_path: Path):
    with pytest.raises(ValueError, match="sentencepiece"):
        load_tokenizer("char", tmp_path / "x.model")


def test_invalid_sentencepiece_options(tmp_path: Path):
    with pytest.raises(ValueError, match="model_type"):
        train_tokenizer("sentencepiece", CORPUS, tmp_path / "src.model", model_type="wordpiece")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer("sentencepiece", CORPUS, tmp_path / "src.model", vocab_size=0)


def test_sentencepiece_empty_corpus_is_a_data_error(tmp_path: Path):
    with pytest.raises(DataError, match=r"src\.model"):
        train_tokenizer("sentencepiece", [], tmp_path / "src.model", vocab_size=50)
    assert not (tmp_path / "src.model").exists()


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_round_trips_and_reloads(tmp_path: Path, model_type: str):
    tokenizer = train_sp(tmp_path, model_type)
    assert (tmp_path / "src.model").is_file()
    reloaded = load_tokenizer("sentencepiece", tmp_path / "src.model")
    for text in [*CORPUS[:50], "Ein Hund sieht die Brücke."]:
        pieces = tokenizer.tokenize(text)
        assert len(pieces) < len(text)  # it learned merges, not only characters
        assert tokenizer.detokenize(pieces) == text
        assert reloaded.tokenize(text) == pieces


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sentencepiece_training_is_deterministic(tmp_path: Path, model_type: str):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = train_sp(tmp_path / "a", model_type)
    second = train_sp(tmp_path / "b", model_type)
    assert first.vocab_pieces() == second.vocab_pieces()
    assert (tmp_path / "a" / "src.model").read_bytes() == (
        tmp_path / "b" / "src.model"
    ).read_bytes()


def test_sentencepiece_vocab_pieces_exclude_control_symbols(tmp_path: Path):
    pieces = train_sp(tmp_path).vocab_pieces()
    assert not {"<unk>", "<s>", "</s>", "<pad>"} & set(pieces)
    assert len(pieces) == len(set(pieces))


def test_vocab_from_sentencepiece_pieces_never_produces_unk(tmp_path: Path):
    tokenizer = train_sp(tmp_path, "unigram")
    codec = TextCodec(tokenizer, Vocab.from_pieces(tokenizer.vocab_pieces()))
    for text in CORPUS:
        assert UNK not in codec.encode(text)


def test_sentencepiece_tokenizer_pickles(tmp_path: Path):
    # DataLoader workers receive the tokenizer by pickling.
    tokenizer = train_sp(tmp_path)
    clone = pickle.loads(pickle.dumps(tokenizer))
    assert clone.tokenize(CORPUS[0]) == tokenizer.tokenize(CORPUS[0])


def test_save_under_another_name_copies_the_model(tmp_path: Path):
    tokenizer = train_sp(tmp_path)
    tokenizer.save(tmp_path / "trg.model")
    assert (tmp_path / "trg.model").read_bytes() == (tmp_path / "src.model").read_bytes()


def test_load_missing_model_names_path(tmp_path: Path):
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / "src.model"))):
        load_tokenizer("sentencepiece", tmp_path / "src.model")
    missing = tmp_path / "pretrained.model"
    with pytest.raises(CheckpointError, match=re.escape(str(missing))):
        load_tokenizer("sentencepiece", missing)


@pytest.mark.parametrize("content", [b"not a model", b""], ids=["garbage", "empty"])
def test_load_corrupt_model_names_path(tmp_path: Path, content: bytes):
    path = tmp_path / "src.model"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_tokenizer("sentencepiece", tmp_path / "src.model")


def test_load_truncated_model_names_path(tmp_path: Path):
    train_sp(tmp_path)
    path = tmp_path / "src.model"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_tokenizer("sentencepiece", tmp_path / "src.model")


@pytest.mark.parametrize("kind", ["char", "word"])
def test_text_codec_round_trip(kind: str):
    tokenizer = load_tokenizer(kind)
    codec = TextCodec(tokenizer, Vocab.build(tokenizer.tokenize(t) for t in CORPUS))
    text = CORPUS[3]
    ids = codec.encode(text)
    assert UNK not in ids and BOS not in ids and EOS not in ids
    assert codec.decode([BOS, *ids, EOS, PAD, PAD]) == text
    assert codec.pieces(text) == tokenizer.tokenize(text)
    assert codec.decode(codec.encode("zebra")) != "zebra"  # unseen pieces become <unk>


def test_text_codec_sentencepiece_round_trip(tmp_path: Path):
    tokenizer = train_sp(tmp_path)
    codec = TextCodec(tokenizer, Vocab.from_pieces(tokenizer.vocab_pieces()))
    for text in CORPUS[:20]:
        assert codec.decode([*codec.encode(text), EOS, PAD]) == text


def test_load_pretrained_model_file(tmp_path: Path):
    if not PRETRAINED.is_file():
        pytest.skip("../shared/bench/spm8k.model not present")
    tokenizer = load_tokenizer("sentencepiece", PRETRAINED)
    text = "Ein Mann fährt Fahrrad."
    assert tokenizer.detokenize(tokenizer.tokenize(text)) == text
    vocab = Vocab.from_pieces(tokenizer.vocab_pieces())
    assert len(vocab) > 1000
    tokenizer.save(tmp_path / "src.model")  # a pretrained model travels with the run
    assert (tmp_path / "src.model").read_bytes() == PRETRAINED.read_bytes()


def test_sentencepiece_keeps_errors_raised_by_the_input(tmp_path: Path):
    def sentences():
        yield from CORPUS[:10]
        raise DataError("line 11 of train.de is not UTF-8")

    with pytest.raises(DataError, match=r"train\.de"):
        train_tokenizer("sentencepiece", sentences(), tmp_path / "src.model", vocab_size=50)


# ---------------------------------------------------------------------------- user-defined symbols

SYMBOLS = ("<eou>", "<2de>", "<2d>")


def test_char_and_word_tokenizers_keep_symbols_whole():
    assert CharTokenizer(SYMBOLS).tokenize("a<eou>b <2de>") == ["a", "<eou>", "b", " ", "<2de>"]
    assert CharTokenizer().tokenize("a<eou>")[:3] == ["a", "<", "e"]  # without: characters
    words = WordTokenizer(SYMBOLS).tokenize("<2de> hi<eou>there <2d>x")
    assert words == ["<2de>", "hi", "<eou>", "there", "<2d>", "x"]  # longest symbol first


@pytest.mark.parametrize("kind", ["char", "word"])
def test_symbols_are_reserved_in_the_vocabulary_and_dropped_on_decoding(kind: str):
    tokenizer = load_tokenizer(kind, symbols=SYMBOLS)
    texts = ["<2de> a b <eou> c", "a b"]
    # min_freq 9 keeps nothing from the text, but every symbol stays, right after the specials
    vocab = Vocab.build((tokenizer.tokenize(t) for t in texts), min_freq=9, reserved=SYMBOLS)
    assert vocab.pieces[4:] == SYMBOLS
    codec = TextCodec(tokenizer, Vocab.build(tokenizer.tokenize(t) for t in texts))
    ids = codec.encode("<2de> a b <eou> c")
    assert codec.vocab.decode(ids).count("<eou>") == 1  # one piece
    assert "<" not in codec.decode(ids) and "<eou>" in codec.decode(ids, keep_symbols=True)
    assert load_tokenizer(kind).fingerprint() != tokenizer.fingerprint()  # caches differ


def test_sentencepiece_trains_symbols_as_single_pieces(tmp_path: Path):
    texts = [f"{t} <eou> {t}" for t in make_corpus(200)]
    sp = train_tokenizer("sentencepiece", texts, tmp_path / "sp.model", 300, symbols=SYMBOLS)
    assert sp.tokenize("hi<eou>there <2de>x").count("<eou>") == 1
    assert "<2de>" in sp.tokenize("<2de>x") and set(SYMBOLS) <= set(sp.vocab_pieces())
    codec = TextCodec(sp, Vocab.from_pieces(sp.vocab_pieces()))
    ids = codec.encode("<2de> a man rides <eou> a bike")
    assert codec.decode(ids) == "a man rides a bike"
    assert codec.decode(ids, keep_symbols=True).split()[0] == "<2de>"
    assert codec.decode([]) == "" and codec.decode(codec.encode("<eou>")) == ""  # EOS first
    reloaded = load_tokenizer("sentencepiece", tmp_path / "sp.model", SYMBOLS)
    assert reloaded.tokenize("a<eou>b") == sp.tokenize("a<eou>b")


def test_a_sentencepiece_model_without_the_symbols_is_refused(tmp_path: Path):
    train_tokenizer("sentencepiece", make_corpus(200), tmp_path / "sp.model", 200)
    with pytest.raises(CheckpointError, match=r"sp\.model.*does not keep <eou>"):
        load_tokenizer("sentencepiece", tmp_path / "sp.model", ["<eou>"])


@pytest.mark.parametrize("kind", TOKENIZERS)
def test_encode_many_equals_encode_one_by_one(tmp_path: Path, kind: str):
    texts = [f"{t} <eou> {t}" for t in make_corpus(200)]
    if kind == "sentencepiece":
        tokenizer = train_tokenizer(kind, texts, tmp_path / "sp.model", 300, symbols=SYMBOLS)
        vocab = Vocab.from_pieces(tokenizer.vocab_pieces())
    else:
        tokenizer = load_tokenizer(kind, symbols=SYMBOLS)
        vocab = Vocab.build((tokenizer.tokenize(t) for t in texts[:50]), reserved=SYMBOLS)
    codec = TextCodec(tokenizer, vocab)
    # unseen words and characters, literal specials, empty text: <unk> alike
    probe = [*texts, "zebra ☃ <s> </s> <unk> <pad>", "", "<2de>x<eou>y"]
    many = codec.encode_many(probe)
    assert many == [codec.encode(t) for t in probe]
    assert any(UNK in ids for ids in many)
