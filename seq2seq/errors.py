"""User-facing errors.

Every error a user can cause (a bad config, a bad data file, a foreign checkpoint)
is raised as a :class:`Seq2SeqError` subclass whose message names what is wrong and
where. The CLI and the benchmark scripts print the message alone, without a traceback
(:func:`guarded`).
"""

import sys
from collections.abc import Callable


class Seq2SeqError(Exception):
    """Base class of the errors the CLI reports as plain messages."""


class ConfigError(Seq2SeqError):
    """An unknown key, a wrong type or an out-of-range value in a config."""


class DataError(Seq2SeqError):
    """A missing, unreadable, misaligned or otherwise unusable data file."""


class CheckpointError(Seq2SeqError):
    """A missing, truncated or mismatched checkpoint or run directory."""


def guarded(prog: str, main: Callable[..., int | None], *args) -> int:
    """``main(*args)``'s exit status, with the errors a user causes reported as one line,
    ``prog: error: message`` (status 2), instead of a traceback.

    Ctrl-C ends with ``prog: interrupted`` (130); a reader that leaves a pipe early
    (``... | head``) ends it quietly (0).
    """
    try:
        return main(*args) or 0
    except Seq2SeqError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0
