"""The mapping between pieces (strings) and the integer ids a model sees.

The first four ids are reserved for the special symbols, in the same order in
every vocabulary, so models and decoders may refer to them as constants.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from seq2seq.errors import CheckpointError
from seq2seq.files import atomic_write_bytes

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


class Vocab:
    """An ordered list of unique pieces with constant-time lookup both ways.

    Args:
        pieces: every piece, ids in list order; ``pieces[:4]`` must equal ``SPECIALS``.

    Raises:
        ValueError: if the specials are missing or misplaced, or a piece repeats.
    """

    def __init__(self, pieces: list[str]) -> None:
        if tuple(pieces[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}, got {pieces[:4]}")
        self._pieces = list(pieces)
        self._ids = {piece: i for i, piece in enumerate(self._pieces)}
        if len(self._ids) != len(self._pieces):
            repeated = [p for p, n in Counter(self._pieces).items() if n > 1]
            raise ValueError(f"a vocabulary must not repeat pieces, repeated: {repeated[:10]}")

    @classmethod
    def build(
        cls,
        tokenized: Iterable[list[str]],
        max_size: int | None = None,
        min_freq: int = 1,
        reserved: Iterable[str] = (),
    ) -> Vocab:
        """Builds a vocabulary from tokenized training text.

        Pieces are ordered by descending frequency; ties are broken by the piece
        string so that the same corpus always yields the same ids.

        Args:
            tokenized: the pieces of each sentence.
            max_size: most pieces to keep besides the specials; ``None`` keeps all.
            min_freq: fewest occurrences a piece needs to be kept.
            reserved: pieces kept whatever their count (user-defined symbols), right
                after the specials; they do not count against ``max_size``.

        Returns:
            The specials, the reserved pieces, then the kept pieces.

        Raises:
            ValueError: if ``max_size`` is negative or ``min_freq`` is below 1.
        """
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0 or None, got {max_size}")
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        counts: Counter[str] = Counter()
        for pieces in tokenized:
            counts.update(pieces)
        reserved = [p for p in dict.fromkeys(reserved) if p not in SPECIALS]
        for piece in (*SPECIALS, *reserved):
            counts.pop(piece, None)
        kept = sorted(
            (p for p, n in counts.items() if n >= min_freq), key=lambda p: (-counts[p], p)
        )
        return cls(list(SPECIALS) + reserved + kept[:max_size])

    @classmethod
    def from_pieces(cls, pieces: Iterable[str]) -> Vocab:
        """Builds a vocabulary from a fixed inventory, e.g. a SentencePiece model's.

        Args:
            pieces: the pieces in the order their ids should follow; specials and
                repeats are skipped because the specials are already in place.

        Returns:
            The specials followed by ``pieces``.
        """
        ordered = dict.fromkeys(p for p in pieces if p not in SPECIALS)
        return cls(list(SPECIALS) + list(ordered))

    def __len__(self) -> int:
        return len(self._pieces)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return self._pieces == other._pieces

    def __hash__(self) -> int:
        return hash(tuple(self._pieces))

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    @property
    def pieces(self) -> tuple[str, ...]:
        """Every piece, in id order."""
        return tuple(self._pieces)

    def encode(self, pieces: list[str]) -> list[int]:
        """Maps pieces to ids; pieces outside the vocabulary become ``UNK``."""
        ids = self._ids
        return [ids.get(piece, UNK) for piece in pieces]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Maps ids to pieces, stopping at the first ``EOS`` and dropping ``PAD`` and ``BOS``.

        Args:
            ids: model output, possibly padded and with a leading ``BOS``.

        Returns:
            The pieces of the sentence, without specials other than ``<unk>``.

        Raises:
            IndexError: if an id is outside the vocabulary.
        """
        pieces = []
        for raw in ids:
            i = int(raw)  # accept tensor elements and numpy ints as well as ints
            if i == EOS:
                break
            if not 0 <= i < len(self._pieces):
                raise IndexError(f"id {i} is outside a vocabulary of size {len(self)}")
            if i not in (PAD, BOS):
                pieces.append(self._pieces[i])
        return pieces

    def piece(self, i: int) -> str:
        """Returns the piece with id ``i``."""
        return self._pieces[i]

    def __contains__(self, piece: object) -> bool:
        return piece in self._ids

    def index(self, piece: str) -> int:
        """Returns the id of ``piece``, or ``UNK`` if it is not in the vocabulary."""
        return self._ids.get(piece, UNK)

    def save(self, path: Path) -> None:
        """Writes the pieces as a JSON list, atomically.

        JSON, rather than one piece per line, keeps pieces such as ``" "`` and
        ``"\\n"`` intact; the temporary file plus ``os.replace`` means a crash
        never leaves a half-written vocabulary next to a checkpoint.

        Args:
            path: the file to write; its directory must exist.
        """
        path = Path(path)
        text = json.dumps(self._pieces, ensure_ascii=False, indent=0)
        atomic_write_bytes(path, text.encode("utf-8"))

    @classmethod
    def load(cls, path: Path) -> Vocab:
        """Reads a vocabulary written by :meth:`save`.

        Args:
            path: the JSON file.

        Returns:
            The vocabulary.

        Raises:
            CheckpointError: if the file is missing, unreadable or not a valid vocabulary.
        """
        path = Path(path)
        try:
            pieces = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CheckpointError(f"vocabulary file {path} does not exist") from None
        except (OSError, ValueError) as e:  # ValueError covers bad JSON and bad UTF-8
            raise CheckpointError(f"vocabulary file {path} is unreadable: {e}") from None
        if not isinstance(pieces, list) or not all(isinstance(p, str) for p in pieces):
            raise CheckpointError(f"vocabulary file {path} is not a JSON list of strings")
        try:
            return cls(pieces)
        except ValueError as e:
            raise CheckpointError(f"vocabulary file {path} is invalid: {e}") from None
