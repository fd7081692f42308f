"""A conversation with a dialogue model: the history is the context of every reply."""

from __future__ import annotations

from dataclasses import replace

from seq2seq.data.records import Record, Turn
from seq2seq.inference.engine import Engine

# Without data.context_turns the model sees every turn; keep the history bounded anyway
# (the run's data.max_src_len then drops the oldest turns that do not fit).
_UNBOUNDED_HISTORY = 100


class Conversation:
    """Alternate turns with ``engine``: each reply sees the turns before it.

    Args:
        engine: a Translator (or CTranslate2 engine) of a run trained on dialogue
            records; its ``rendering`` joins the turns as in training.
        context_turns: turns the model sees (the user's newest one included); None:
            the run's ``data.context_turns``.
        tgt_lang, task: the reply language and task of a run trained with tags.

    Raises:
        ConfigError: a language or task the run does not know (or none where it needs one).
    """

    def __init__(
        self,
        engine: Engine,
        context_turns: int | None = None,
        *,
        tgt_lang: str | None = None,
        task: str | None = None,
    ):
        engine.check_tags(tgt_lang, task)
        self.engine, self.tgt_lang, self.task = engine, tgt_lang, task
        self.rendering = engine.rendering
        if context_turns is not None:
            self.rendering = replace(self.rendering, context_turns=context_turns)
        self.history: list[Turn] = []

    def reply(self, text: str) -> str:
        """The model's answer to the user's ``text``; both join the history."""
        record = Record(
            text.strip(), context=tuple(self.history), tgt_lang=self.tgt_lang, task=self.task
        )
        source = self.rendering.source(record)
        answer = self.engine.translate([source])[0].text
        keep = self.rendering.context_turns or _UNBOUNDED_HISTORY
        self.history = [*self.history, Turn(text.strip()), Turn(answer)][-keep:]
        return answer

    def reset(self) -> None:
        """Forget the history: the next turn starts a new conversation."""
        self.history = []
