"""Tokenizers: raw text to pieces and back.

A tokenizer travels with the model: whatever it needs to reproduce its
segmentation (a SentencePiece model) is saved in the run directory, so that a
trained model always reads and writes text the way it was trained.
"""

from __future__ import annotations

import abc
import functools
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import sentencepiece as spm
import torch

from seq2seq.data.vocab import UNK, Vocab
from seq2seq.errors import CheckpointError, DataError
from seq2seq.files import atomic_write_bytes

TOKENIZERS = ("char", "word", "sentencepiece")
SP_MODEL_TYPES = ("bpe", "unigram")
# Fixed so that training twice on the same text gives the same pieces.
_SP_SEED = 0
# Caps the sentences SentencePiece samples; beyond this it shuffles (seeded) and subsamples.
_SP_MAX_SENTENCES = 2_000_000


class Tokenizer(abc.ABC):
    """Splits text into pieces and joins pieces back into text.

    Args:
        symbols: user-defined symbols (separators such as ``<eou>``, tags such as
            ``<2de>``): each is one piece wherever it occurs, never split.
    """

    kind: ClassVar[str]

    def __init__(self, symbols: Iterable[str] = ()) -> None:
        self.symbols = tuple(dict.fromkeys(symbols))

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[str]:
        """Returns the pieces of ``text``."""

    @abc.abstractmethod
    def detokenize(self, pieces: list[str]) -> str:
        """Returns the text that ``pieces`` stand for."""

    def fingerprint(self) -> bytes:
        """Bytes that change whenever tokenization could (for caching encoded data)."""
        return "\0".join((self.kind, *self.symbols)).encode()

    def drop_symbols(self, pieces: list[str]) -> list[str]:
        """``pieces`` without the user-defined symbols (what text shows of a separator or tag)."""
        symbols = set(self.symbols)
        return [p for p in pieces if p not in symbols]

    def _symbol_pattern(self) -> str:
        """A regex alternation of the symbols, longest first (so ``<a>`` never hides ``<ab>``)."""
        return "|".join(re.escape(s) for s in sorted(self.symbols, key=len, reverse=True))

    def vocab_pieces(self) -> list[str] | None:
        """Returns the tokenizer's own fixed inventory of pieces, or ``None`` if it has none."""
        return None

    def save(self, model_file: Path) -> None:
        """Writes what :func:`load_tokenizer` needs besides ``kind``; nothing by default.

        Args:
            model_file: where a learned model goes (the run directory's tokenizer file).
        """
        return  # char and word tokenizers are fully described by their kind


class CharTokenizer(Tokenizer):
    """Every character is a piece, spaces included, so ``detokenize`` is exact."""

    kind = "char"

    def __init__(self, symbols: Iterable[str] = ()) -> None:
        super().__init__(symbols)
        symbols = self._symbol_pattern()
        self._split = re.compile(f"{symbols}|." if symbols else ".", re.DOTALL).findall

    def tokenize(self, text: str) -> list[str]:
        return self._split(text)

    def detokenize(self, pieces: list[str]) -> str:
        return "".join(pieces)


class WordTokenizer(Tokenizer):
    """Pieces are whitespace-separated words; runs of whitespace become one space."""

    kind = "word"

    def __init__(self, symbols: Iterable[str] = ()) -> None:
        super().__init__(symbols)
        symbols = self._symbol_pattern()
        self._split = re.compile(f"({symbols})").split if symbols else None

    def tokenize(self, text: str) -> list[str]:
        words = text.split()
        if self._split is None:
            return words
        # A symbol glued to a word ("hi<eou>") is a piece of its own.
        return [part for word in words for part in self._split(word) if part]

    def detokenize(self, pieces: list[str]) -> str:
        return " ".join(pieces)


class SentencePieceTokenizer(Tokenizer):
    """Wraps a SentencePiece (BPE or unigram) model.

    Args:
        model_proto: the serialized model, i.e. the bytes of a ``.model`` file.
        symbols: user-defined symbols; the model must hold each as one piece (trained with
            them as SentencePiece's ``user_defined_symbols``).

    Raises:
        RuntimeError: if ``model_proto`` is not a SentencePiece model.
        ValueError: if a symbol is not one piece of the model.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, symbols: Iterable[str] = ()) -> None:
        super().__init__(symbols)
        self._sp = spm.SentencePieceProcessor()
        # Loading explicitly, because the constructor silently skips an empty proto.
        self._sp.load_from_serialized_proto(model_proto)
        # A user-defined symbol is one piece even inside a word; a learned piece is not.
        missing = [s for s in self.symbols if s not in self._sp.encode(f"a{s}a", out_type=str)]
        if missing:
            raise ValueError(
                f"the sentencepiece model does not keep {', '.join(missing)} as one piece "
                "(it was trained without these user-defined symbols)"
            )

    def fingerprint(self) -> bytes:
        return self._sp.serialized_model_proto()

    def tokenize(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)

    def piece_ids(self, texts: list[str]) -> list[list[int]]:
        """SentencePiece's own ids of the pieces of each text (many texts at once, in C++:
        several times faster than :meth:`tokenize` text by text)."""
        return self._sp.encode(texts, out_type=int, num_threads=torch.get_num_threads())

    def id_pieces(self) -> list[str | None]:
        """The piece of each SentencePiece id (what :meth:`piece_ids` numbers); None for
        its control and unknown symbols."""
        sp = self._sp
        return [
            None if sp.is_control(i) or sp.is_unknown(i) else sp.id_to_piece(i)
            for i in range(sp.get_piece_size())
        ]

    def detokenize(self, pieces: list[str]) -> str:
        return self._sp.decode_pieces(pieces)

    def drop_symbols(self, pieces: list[str]) -> list[str]:
        """Also drops the bare word boundary ``▁`` SentencePiece puts before a symbol."""
        symbols = set(self.symbols)
        nxt = [*pieces[1:], None] if pieces else []  # an empty output (EOS first) too
        return [
            p
            for p, n in zip(pieces, nxt, strict=True)
            if p not in symbols and not (p == "\u2581" and n in symbols)
        ]

    def vocab_pieces(self) -> list[str]:
        """Returns the model's pieces in id order, without its control and unknown symbols.

        Those symbols are left out because :class:`Vocab` supplies its own specials.
        """
        sp = self._sp
        return [
            sp.id_to_piece(i)
            for i in range(sp.get_piece_size())
            if not (sp.is_control(i) or sp.is_unknown(i))
        ]

    def save(self, model_file: Path) -> None:
        """Writes the model to ``model_file``, so a pretrained model travels with the run."""
        atomic_write_bytes(Path(model_file), self._sp.serialized_model_proto())


@dataclass(frozen=True)
class TextCodec:
    """A tokenizer and the vocabulary built over its pieces: text to ids and back."""

    tokenizer: Tokenizer
    vocab: Vocab

    def encode(self, text: str) -> list[int]:
        """Returns the ids of ``text``, without ``BOS`` or ``EOS``."""
        return self.vocab.encode(self.tokenizer.tokenize(text))

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """``[encode(t) for t in texts]``, in one call to SentencePiece where it is the
        tokenizer (for encoding large corpora)."""
        if not isinstance(self.tokenizer, SentencePieceTokenizer):
            return [self.encode(t) for t in texts]
        table = self._vocab_ids
        return [[table[i] for i in ids] for ids in self.tokenizer.piece_ids(texts)]

    @functools.cached_property
    def _vocab_ids(self) -> list[int]:
        """The vocabulary id of each SentencePiece id (``UNK`` for its control pieces)."""
        pieces = self.tokenizer.id_pieces()  # type: ignore[attr-defined]
        return [UNK if piece is None else self.vocab.index(piece) for piece in pieces]

    def decode(self, ids: Iterable[int], keep_symbols: bool = False) -> str:
        """Returns the text of ``ids``, read up to the first ``EOS``.

        User-defined symbols (separators, tags) are left out unless ``keep_symbols``.
        """
        pieces = self.vocab.decode(ids)
        if not keep_symbols and self.tokenizer.symbols:
            pieces = self.tokenizer.drop_symbols(pieces)
        return self.tokenizer.detokenize(pieces)

    def pieces(self, text: str) -> list[str]:
        """Returns the pieces of ``text``, e.g. to label an attention plot."""
        return self.tokenizer.tokenize(text)


def train_tokenizer(
    kind: str,
    texts: Iterable[str],
    model_file: Path,
    vocab_size: int = 8000,
    model_type: str = "bpe",
    symbols: Iterable[str] = (),
) -> Tokenizer:
    """Trains a tokenizer on ``texts`` and saves it as ``model_file``.

    Only SentencePiece learns anything; ``char`` and ``word`` ignore ``texts``.

    Args:
        kind: one of ``TOKENIZERS``.
        texts: training sentences, read once.
        model_file: where the model is written (SentencePiece only).
        vocab_size: SentencePiece's target size; a soft limit, so small corpora still train.
        model_type: ``"bpe"`` or ``"unigram"`` (SentencePiece only).
        symbols: user-defined symbols, each kept as one piece.

    Returns:
        The trained tokenizer.

    Raises:
        ValueError: if ``kind`` or ``model_type`` is unknown or ``vocab_size`` is not positive.
        DataError: if SentencePiece cannot train on ``texts`` (e.g. there are none).
    """
    symbols = tuple(symbols)
    if kind != SentencePieceTokenizer.kind:
        return _simple_tokenizer(kind, symbols)
    if model_type not in SP_MODEL_TYPES:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of {SP_MODEL_TYPES}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    path = Path(model_file)
    model_proto = _train_sentencepiece(texts, path, vocab_size, model_type, symbols)
    tokenizer = SentencePieceTokenizer(model_proto, symbols)
    tokenizer.save(path)
    return tokenizer


def load_tokenizer(
    kind: str, model_file: Path | None = None, symbols: Iterable[str] = ()
) -> Tokenizer:
    """Loads a tokenizer saved by :func:`train_tokenizer` or :meth:`Tokenizer.save`.

    Args:
        kind: one of ``TOKENIZERS``.
        model_file: the SentencePiece model (a run's tokenizer file, or a pretrained one);
            required for SentencePiece, refused for the other kinds.
        symbols: the user-defined symbols it was trained with.

    Returns:
        The tokenizer.

    Raises:
        ValueError: if ``kind`` is unknown, or ``model_file`` is given for another kind.
        CheckpointError: if the SentencePiece model file is missing or corrupt, or does
            not hold a symbol as one piece.
    """
    if kind != SentencePieceTokenizer.kind:
        if model_file is not None:
            raise ValueError(f"model_file applies to sentencepiece only, not to {kind!r}")
        return _simple_tokenizer(kind, symbols)
    if model_file is None:
        raise ValueError("a sentencepiece tokenizer is loaded from its model_file")
    path = Path(model_file)
    try:
        model_proto = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"sentencepiece model {path} does not exist") from None
    except OSError as e:
        raise CheckpointError(f"sentencepiece model {path} is unreadable: {e}") from None
    try:
        return SentencePieceTokenizer(model_proto, symbols)
    except RuntimeError as e:
        raise CheckpointError(f"sentencepiece model {path} is corrupt: {e}") from None
    except ValueError as e:
        raise CheckpointError(f"sentencepiece model {path}: {e}") from None


def _simple_tokenizer(kind: str, symbols: Iterable[str] = ()) -> Tokenizer:
    """Returns the tokenizer of a kind that learns nothing from data."""
    if kind == CharTokenizer.kind:
        return CharTokenizer(symbols)
    if kind == WordTokenizer.kind:
        return WordTokenizer(symbols)
    raise ValueError(f"unknown tokenizer {kind!r}; expected one of {TOKENIZERS}")


def _train_sentencepiece(
    texts: Iterable[str], path: Path, vocab_size: int, model_type: str, symbols: tuple[str, ...]
) -> bytes:
    """Trains a SentencePiece model in memory and returns its serialized bytes.

    Raises:
        DataError: naming ``path`` if training fails, e.g. because ``texts`` is empty.
    """
    counted = _CountingIterator(texts)
    model = io.BytesIO()
    # The generator is process-global; seeding right before training makes the
    # sentence shuffle, and so the learned pieces, reproducible.
    spm.set_random_generator_seed(_SP_SEED)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted,
            model_writer=model,
            model_type=model_type,
            vocab_size=vocab_size,
            character_coverage=1.0,  # seq2seq data is small enough to keep every character
            hard_vocab_limit=False,  # a small corpus may not support vocab_size pieces
            byte_fallback=False,
            num_threads=2,
            input_sentence_size=_SP_MAX_SENTENCES,
            shuffle_input_sentence=True,
            minloglevel=2,  # keep SentencePiece's INFO/WARNING chatter off stderr
            user_defined_symbols=list(symbols),
        )
    except RuntimeError as e:
        if counted.error is not None:
            raise counted.error from None
        if counted.count == 0:
            raise DataError(f"cannot train sentencepiece model {path}: no training text") from None
        raise DataError(f"training sentencepiece model {path} failed: {e}") from None
    return model.getvalue()


class _CountingIterator(Iterator[str]):
    """Passes sentences through to SentencePiece, counting them and keeping any error.

    SentencePiece turns an exception raised by its input into a bare RuntimeError;
    keeping the original lets e.g. a DataError about a bad data file reach the user.
    """

    def __init__(self, texts: Iterable[str]) -> None:
        self._texts = iter(texts)
        self.count = 0
        self.error: Exception | None = None

    def __next__(self) -> str:
        try:
            text = next(self._texts)
        except StopIteration:
            raise
        except Exception as e:
            self.error = e
            raise
        self.count += 1
        return text
