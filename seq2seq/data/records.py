"""Records (dialogue turns, languages, tasks) rendered to the source text a model reads.

A training example is a :class:`Record`. Plain text and TSV pairs are records with
only ``src`` and ``tgt``; a JSONL line may also carry ``context`` (earlier turns,
oldest first, each a string or ``{"speaker", "text"}``), ``speaker`` (who said
``src``), ``tgt_lang`` and ``task``. :class:`Rendering` (from the ``data`` config)
turns a record into one source string::

    [<task:name>] [<2xx>] turn <eou> turn <eou> ... src

keeping the last ``data.context_turns`` turns. Tags and the separator are user-defined
symbols, one token each, that the tokenizers never split and decoding leaves out.
:class:`SourceCut` applies ``data.max_src_len`` to the token ids, in training and at
inference alike: it cuts the end, or with ``data.truncate: oldest_turns`` drops whole
turns oldest first, keeping the tags in front.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from seq2seq.data.tokenizers import TextCodec
from seq2seq.errors import DataError

RECORD_KEYS = ("src", "tgt", "context", "speaker", "src_lang", "tgt_lang", "task")


def lang_tag(lang: str) -> str:
    """The source tag asking for output in ``lang`` (Johnson et al., 2017): ``<2de>``."""
    return f"<2{lang}>"


def task_tag(name: str) -> str:
    """The source tag naming a task: ``<task:summarize>``."""
    return f"<task:{name}>"


@dataclass(frozen=True)
class Turn:
    """One utterance of a conversation."""

    text: str
    speaker: str | None = None


@dataclass(frozen=True)
class Record:
    """One example before rendering. ``tgt`` is None for inputs to decode."""

    src: str = ""
    tgt: str | None = None
    context: tuple[Turn, ...] = ()
    speaker: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None
    task: str | None = None

    def turns(self) -> list[Turn]:
        """The context, then ``src`` as the newest turn when it is not empty."""
        newest = [Turn(self.src, self.speaker)] if self.src.strip() else []
        return [*self.context, *newest]


def parse_record(obj: object, where: str) -> Record:
    """A :class:`Record` from one decoded JSON value; keys outside :data:`RECORD_KEYS`
    (an ``id``, say) are ignored.

    Args:
        obj: the JSON value of one line.
        where: ``"file, line N"`` for messages.

    Raises:
        DataError: not an object, a field of the wrong type, or neither ``src`` nor
            ``context`` given; the message names ``where`` and the field.
    """
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for key in (k for k in RECORD_KEYS if k != "context"):  # the string fields
        if key in obj and not isinstance(obj[key], str):
            kind = type(obj[key]).__name__
            raise DataError(f'{where}: field "{key}" must be a string, got {kind}')
    context = obj.get("context", [])
    if not isinstance(context, list):
        kind = type(context).__name__
        raise DataError(f'{where}: field "context" must be a list of turns, got {kind}')
    turns = tuple(_parse_turn(turn, f"{where}, context[{i}]") for i, turn in enumerate(context))
    if "src" not in obj and not turns:
        raise DataError(f'{where}: a record needs "src" or a non-empty "context"')
    return Record(
        src=obj.get("src", ""),
        tgt=obj.get("tgt"),
        context=turns,
        speaker=obj.get("speaker"),
        src_lang=obj.get("src_lang"),
        tgt_lang=obj.get("tgt_lang"),
        task=obj.get("task"),
    )


def _parse_turn(turn: object, where: str) -> Turn:
    if isinstance(turn, str):
        return Turn(turn)
    if isinstance(turn, dict) and isinstance(turn.get("text"), str):
        speaker = turn.get("speaker")
        if speaker is None or isinstance(speaker, str):
            return Turn(turn["text"], speaker)
    raise DataError(
        f'{where}: a turn is a string or an object {{"text": str, "speaker": str}}, got {turn!r}'
    )


@dataclass(frozen=True)
class Rendering:
    """How records become source text (the ``data`` keys of the same names)."""

    context_turns: int = 0
    turn_separator: str = "<eou>"
    speaker_tags: bool = False
    lang_tags: bool = False
    task_tags: bool = False

    @classmethod
    def of(cls, data) -> Rendering:
        """The rendering a :class:`~seq2seq.config.DataConfig` asks for."""
        return cls(
            data.context_turns,
            data.turn_separator,
            data.speaker_tags,
            data.lang_tags,
            data.task_tags,
        )

    def tags(self, record: Record) -> list[str]:
        """The tags in front of the record's source (task first, then language)."""
        tags = []
        if self.task_tags and record.task:
            tags.append(task_tag(record.task))
        if self.lang_tags and record.tgt_lang:
            tags.append(lang_tag(record.tgt_lang))
        return tags

    def source(self, record: Record) -> str:
        """The source text of ``record``: tags, then its last turns joined by the separator.

        Raises:
            DataError: language or task tags are on but the record has no
                ``tgt_lang`` / ``task`` to tag.
        """
        if self.lang_tags and not record.tgt_lang:
            raise DataError("data.lang_tags is on but a record has no tgt_lang")
        if self.task_tags and not record.task:
            raise DataError("data.task_tags is on but a record has no task")
        turns = record.turns()
        if self.context_turns:
            turns = turns[-self.context_turns :]
        texts = [
            f"{t.speaker}: {t.text.strip()}" if self.speaker_tags and t.speaker else t.text.strip()
            for t in turns
        ]
        return " ".join([*self.tags(record), f" {self.turn_separator} ".join(texts)])

    def symbols(self, records: Iterable[Record]) -> list[str]:
        """The symbols rendering ``records`` writes: their tags, and the separator when a
        record has more than one turn."""
        found: dict[str, None] = {}
        for record in records:
            found.update(dict.fromkeys(self.tags(record)))
            kept = len(record.turns())
            if (min(kept, self.context_turns) if self.context_turns else kept) > 1:
                found[self.turn_separator] = None
        return list(found)


@dataclass(frozen=True)
class SourceCut:
    """``data.max_src_len`` applied to source ids (without EOS).

    Attributes:
        limit: the most tokens a source keeps; None keeps them all.
        oldest_first: ``data.truncate: oldest_turns``: whole turns are dropped from the
            front (after the tags) until the source fits, then the remaining turn loses
            its oldest tokens; otherwise the end is cut.
        separator: the id of the turn separator (None: it is not in the vocabulary, so a
            source is one turn).
        tags: ids of the tag symbols that stay in front.
    """

    limit: int | None = None
    oldest_first: bool = False
    separator: int | None = None
    tags: frozenset[int] = frozenset()

    @classmethod
    def of(cls, data, codec: TextCodec) -> SourceCut:
        """The cut a :class:`~seq2seq.config.DataConfig` asks for, in ``codec``'s ids."""
        if data.truncate == "end":
            return cls(data.max_src_len)
        vocab, separator = codec.vocab, data.turn_separator
        symbols = set(codec.tokenizer.symbols) - {separator}
        # SentencePiece writes a bare "\u2581" before a symbol; it belongs to the tag.
        tags = frozenset(vocab.index(s) for s in (*symbols, "\u2581") if s in vocab)
        sep_id = vocab.index(separator) if separator in vocab else None
        return cls(data.max_src_len, True, sep_id, tags)

    def __call__(self, ids: list[int]) -> list[int]:
        if self.limit is None or len(ids) <= self.limit:
            return ids
        if not self.oldest_first:
            return ids[: self.limit]
        n_tags = 0
        while n_tags < len(ids) and ids[n_tags] in self.tags:
            n_tags += 1
        head, body = ids[:n_tags], ids[n_tags:]
        room = max(0, self.limit - len(head))
        while self.separator is not None and len(body) > room and self.separator in body:
            body = body[body.index(self.separator) + 1 :]
        return head + body[max(0, len(body) - room) :] if room else head[: self.limit]
