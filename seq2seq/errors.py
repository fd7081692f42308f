"""User-facing errors.

Every error a user can cause (a bad config, a bad data file, a foreign checkpoint)
is raised as a :class:`Seq2SeqError` subclass whose message names what is wrong and
where. The CLI prints the message alone, without a traceback.
"""


class Seq2SeqError(Exception):
    """Base class of the errors the CLI reports as plain messages."""


class ConfigError(Seq2SeqError):
    """An unknown key, a wrong type or an out-of-range value in a config."""


class DataError(Seq2SeqError):
    """A missing, unreadable, misaligned or otherwise unusable data file."""


class CheckpointError(Seq2SeqError):
    """A missing, truncated or mismatched checkpoint or run directory."""
