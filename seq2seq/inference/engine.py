"""What every inference engine shares: its interface, its output, and the translate loop.

An engine turns raw text into :class:`Translation` objects in three phases that a
server can drive on their own (gathering rows of many requests into one batch):

1. ``encode(texts)``: source ids per text, cut to the model's positions;
2. ``decode_batch(rows)``: the hypotheses of a batch of id rows, best first;
3. ``finish(src_ids, hyps)``: detokenized text, scores, tokens and attention.

:func:`translate_texts` runs the three phases over a list of texts, batched by the
engine's own budget (``batches``). The native :class:`~seq2seq.inference.Translator`
and the CTranslate2 engine both implement :class:`Engine`, sharing ``finish``,
``translate`` and ``__call__`` through :class:`PhasedEngine`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from tqdm import tqdm

from seq2seq.config import Config, DecodeConfig, from_dict, to_dict
from seq2seq.data.records import Record, Rendering, SourceCut, lang_tag, task_tag
from seq2seq.data.tokenizers import TextCodec
from seq2seq.data.vocab import BOS, EOS, PAD, SPECIALS, UNK, Vocab
from seq2seq.errors import ConfigError
from seq2seq.search import Hypothesis

log = logging.getLogger("seq2seq")

# Lexical constraints of a batch: per row, the phrases (target ids) its outputs contain.
Constraints = list[list[list[int]]] | None


@dataclass
class Translation:
    """One output: the text, its score, and (on request) attention with token labels.

    ``score`` is what the search ranked by (see :class:`~seq2seq.search.Hypothesis`);
    ``nbest`` holds every returned hypothesis as ``(text, score)``, best first.
    """

    text: str
    score: float
    src_tokens: list[str]
    out_tokens: list[str]
    attention: torch.Tensor | None = None  # [len(out_tokens), len(src_tokens)]
    nbest: list[tuple[str, float]] = field(default_factory=list)


@runtime_checkable
class Engine(Protocol):
    """An inference engine: raw text in, :class:`Translation` out, in three phases.

    Implementations must be safe to call from several threads at once.
    """

    src_codec: TextCodec
    tgt_codec: TextCodec
    decode: DecodeConfig
    rendering: Rendering

    @property
    def has_attention(self) -> bool: ...

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Source ids of each text (without EOS), cut to fit the model."""
        ...

    def batches(self, rows: list[list[int]]) -> list[list[int]]:
        """Indices of ``rows`` grouped into the batches this engine decodes at once."""
        ...

    def decode_batch(
        self, rows: list[list[int]], attention: bool = False, constraints: Constraints = None
    ) -> list[list[Hypothesis]]:
        """Hypotheses of each (non-empty) row, best first; attention ``[steps, src_len + 1]``.

        ``constraints``: per row, target-id phrases every output must contain."""
        ...

    def finish(self, src_ids: list[int], hyps: list[Hypothesis]) -> Translation: ...

    def configure(self, **decode) -> Engine:
        """An engine over the same weights with some decode settings changed."""
        ...

    def check_tags(self, tgt_lang: str | None, task: str | None) -> None:
        """Raises ConfigError unless the run knows (and needs) these tags."""
        ...

    def render(
        self, texts: list[str], *, tgt_lang: str | None = None, task: str | None = None
    ) -> list[str]:
        """The model's input for raw texts: the run's tags put in front (``<2de>``)."""
        ...

    def translate(
        self,
        texts: list[str],
        *,
        attention: bool = False,
        progress: bool = False,
        tgt_lang: str | None = None,
        task: str | None = None,
        constraints: list[list[str]] | None = None,
    ) -> list[Translation]: ...

    def __call__(self, texts: list[str]) -> list[str]: ...


class PhasedEngine:
    """``render``, ``finish``, ``translate`` and ``__call__`` of an engine, from its
    phases, its ``src_codec``/``tgt_codec`` and its ``rendering`` (the run's record
    rendering; the plain one when texts come rendered, as in validation); an engine
    adds ``encode``, ``batches`` and ``decode_batch``."""

    src_codec: TextCodec
    tgt_codec: TextCodec
    rendering: Rendering = Rendering()

    def check_tags(self, tgt_lang: str | None, task: str | None) -> None:
        """The run knows these tags, and gets them where it was trained with them.

        Raises:
            ConfigError: a target language or task the run was not trained with (the
                message lists those it knows), or none where the run needs one.
        """
        _check_tag(self.rendering.lang_tags, tgt_lang, "language", lang_tag, self.src_codec)
        _check_tag(self.rendering.task_tags, task, "task", task_tag, self.src_codec)

    def render(
        self, texts: list[str], *, tgt_lang: str | None = None, task: str | None = None
    ) -> list[str]:
        """The model's input for raw texts: the run's tags put in front (``<2de>``).

        Raises:
            ConfigError: from :meth:`check_tags`.
        """
        self.check_tags(tgt_lang, task)
        if tgt_lang is None and task is None:
            return texts
        return [
            self.rendering.source(Record(t, tgt_lang=tgt_lang, task=task)) if t.strip() else t
            for t in texts
        ]

    def finish(self, src_ids: list[int], hyps: list[Hypothesis]) -> Translation:
        return finish(self.src_codec, self.tgt_codec, src_ids, hyps)

    def translate(
        self,
        texts: list[str],
        *,
        attention: bool = False,
        progress: bool = False,
        tgt_lang: str | None = None,
        task: str | None = None,
        constraints: list[list[str]] | None = None,
    ) -> list[Translation]:
        """Translate raw sentences; outputs come back in input order.

        Empty or whitespace-only inputs give empty outputs (line alignment is kept).
        ``tgt_lang``/``task`` choose the output language and task of a run trained with
        ``data.lang_tags``/``data.task_tags``. ``constraints`` gives each text the
        phrases its output must contain (lexically constrained beam search).

        Raises:
            ConfigError: from :meth:`check_tags` and :meth:`constraint_ids`.
        """
        return translate_texts(
            self,  # type: ignore[arg-type]
            self.render(texts, tgt_lang=tgt_lang, task=task),
            attention=attention,
            progress=progress,
            constraints=None if constraints is None else self.constraint_ids(constraints, texts),
        )

    def constraint_ids(self, constraints: list[list[str]], texts: list[str]) -> Constraints:
        """The target ids of each text's constraint phrases (tokenized as outputs are).

        Raises:
            ConfigError: a list per text that does not match the texts, an empty phrase,
                or one the target vocabulary cannot represent (it would need ``<unk>``).
        """
        if len(constraints) != len(texts):
            raise ConfigError(
                f"constraints: {len(constraints)} lists of phrases for {len(texts)} texts"
            )
        encoded = []
        for phrases in constraints:
            row = []
            for phrase in phrases:
                ids = self.tgt_codec.encode(phrase)
                if not ids:
                    raise ConfigError("constraint '': a phrase needs at least one character")
                vocab = self.tgt_codec.vocab
                specials = [vocab.piece(i) for i in ids if i in (PAD, BOS, EOS)]
                if specials:
                    raise ConfigError(
                        f"constraint {phrase!r}: {' '.join(specials)} is a special symbol, "
                        "never part of an output"
                    )
                if UNK in ids:
                    unknown = [
                        p for p in self.tgt_codec.pieces(phrase) if p not in self.tgt_codec.vocab
                    ]
                    raise ConfigError(
                        f"constraint {phrase!r}: the target vocabulary cannot represent "
                        f"{' '.join(unknown) or 'it'} (an output would need <unk>)"
                    )
                row.append(ids)
            encoded.append(row)
        return encoded

    def __call__(self, texts: list[str]) -> list[str]:
        return [t.text for t in self.translate(texts)]


def known_tags(codec: TextCodec, tag_of: Callable[[str], str]) -> list[str]:
    """The values of one kind of tag the run's source vocabulary holds: with
    ``lang_tag`` its target languages (``["cs", "de", "fr"]``), with ``task_tag`` its
    tasks."""
    prefix = tag_of("")[:-1]  # "<2" or "<task:"; tags end in ">"
    return [s[len(prefix) : -1] for s in codec.tokenizer.symbols if s.startswith(prefix)]


def revised(decode: DecodeConfig, changes: dict) -> DecodeConfig:
    """``decode`` with some settings changed, validated as a config file's would be.

    Raises:
        ConfigError: an unknown key (naming the closest one) or an invalid value.
    """
    if not changes:
        return decode
    raw = {**to_dict(Config(decode=decode))["decode"], **changes}
    return from_dict({"decode": raw}).decode


def _check_tag(
    tagged: bool, value: str | None, what: str, tag_of: Callable[[str], str], codec: TextCodec
) -> None:
    """``value`` names a tag the run knows when the run tags sources, else is None."""
    known = known_tags(codec, tag_of)
    option = {"language": "--tgt-lang (tgt_lang=)", "task": "--task (task=)"}[what]
    if value is None and tagged:
        raise ConfigError(
            f"this run was trained with a {what} tag on every source: choose the {what} "
            f"with {option}; it knows {', '.join(known) or 'none'}"
        )
    if value is not None and not tagged:
        raise ConfigError(
            f"{option.split()[0]} {value}: this run was trained without {what} tags "
            f"(data.{'lang' if what == 'language' else 'task'}_tags); leave it out"
        )
    if value is not None and tag_of(value) not in codec.tokenizer.symbols:
        raise ConfigError(
            f"{option.split()[0]} {value}: not a {what} of this run; it knows "
            f"{', '.join(known) or 'none'}"
        )


def check_symbols(symbols: Iterable[str], known: Iterable[str], where: str) -> None:
    """Rendered data uses only tags and separators the run was trained with (``known``).

    Raises:
        ConfigError: naming the unknown ones and those the run knows.
    """
    known = list(known)
    unknown = sorted(set(symbols) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: its records ask for {', '.join(unknown)}, which this run was not "
            f"trained with; it knows {', '.join(known) or 'no symbols'} "
            "(choose the language or task among those: --tgt-lang, --task)"
        )


def translate_texts(
    engine: Engine,
    texts: list[str],
    *,
    attention: bool = False,
    progress: bool = False,
    constraints: Constraints = None,
) -> list[Translation]:
    """Translate model inputs (already rendered) with ``engine``, in input order;
    ``constraints``: each text's target-id phrases, which its output must contain.

    Empty or whitespace-only inputs give empty outputs (line alignment is kept).
    """
    rows = engine.encode(texts)
    results = [Translation("", 0.0, [], []) for _ in texts]
    real = [i for i, text in enumerate(texts) if text.strip()]
    batches = [[real[j] for j in b] for b in engine.batches([rows[i] for i in real])]
    for index in tqdm(batches, disable=not progress, unit="batch", leave=False):
        wanted = None if constraints is None else [constraints[i] for i in index]
        hyps = engine.decode_batch([rows[i] for i in index], attention, wanted)
        for i, found in zip(index, hyps, strict=True):
            results[i] = engine.finish(rows[i], found)
    return results


def finish(
    src_codec: TextCodec, tgt_codec: TextCodec, src_ids: list[int], hyps: list[Hypothesis]
) -> Translation:
    """A :class:`Translation` of one sentence's hypotheses (best first).

    Token labels end in ``</s>``; attention is cut to ``[output tokens, source tokens]``.
    """
    best = hyps[0]
    out_tokens = [tgt_codec.vocab.piece(i) for i in best.tokens] + [SPECIALS[EOS]]
    src_tokens = [src_codec.vocab.piece(i) for i in src_ids] + [SPECIALS[EOS]]
    weights = best.attention
    if weights is not None:
        weights = weights[: len(out_tokens), : len(src_tokens)]
        out_tokens = out_tokens[: weights.size(0)]
    texts = [(tgt_codec.decode(h.tokens), h.score) for h in hyps]
    return Translation(texts[0][0], best.score, src_tokens, out_tokens, weights, texts)


def encode_source(
    codec: TextCodec, text: str, max_positions: int | None, cut: SourceCut | None = None
) -> list[int]:
    """Source ids of ``text`` (without EOS): cut as in training (``data.max_src_len``),
    and with a warning to fit the model's positions."""
    ids = codec.encode(text)
    if cut is not None:
        ids = cut(ids)
    if max_positions is not None and len(ids) + 1 > max_positions:  # + EOS
        log.warning(
            "a source of %d tokens is cut to the model's %d positions", len(ids) + 1, max_positions
        )
        ids = ids[: max_positions - 1]
    return ids


def banned_ids(pieces: tuple[str, ...], vocab: Vocab) -> list[int]:
    """The ids of ``decode.banned`` pieces.

    Raises:
        ConfigError: a piece outside the vocabulary, or EOS (which ends every output).
    """
    ids = []
    for piece in pieces:
        index = vocab.index(piece)
        if index == UNK and piece != vocab.piece(UNK):
            raise ConfigError(f"decode.banned: {piece!r} is not in the target vocabulary")
        if index == EOS:
            raise ConfigError(f"decode.banned: {piece!r} ends every output; it cannot be banned")
        ids.append(index)
    return ids
