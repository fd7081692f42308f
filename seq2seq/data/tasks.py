"""Built-in toy tasks, generated from a seed: the toolkit's sanity checks, no download.

* ``dates``: a date as a human might write it, in one of many formats -> ISO ``YYYY-MM-DD``.
* ``reverse``: space-separated letter/digit tokens -> the same tokens in reverse order.
* ``sort``: space-separated integers 0-99 -> the same integers in ascending order.
* ``addition``: ``"a+b"`` with 1-5 digit operands -> the decimal sum.

All splits are cut from one example stream per ``(task, seed)``. Each distinct source
string belongs to exactly one split, chosen by a stable hash of the string, so valid and
test sources never occur in train, whatever the seed or size.
"""

from __future__ import annotations

import datetime
import hashlib
import random
from collections.abc import Callable

TASKS: tuple[str, ...] = ("dates", "reverse", "sort", "addition")
SPLITS: tuple[str, ...] = ("train", "valid", "test")

# Hash buckets (0-99) per split: 80% train, 10% valid, 10% test.
_SPLIT_BUCKETS = {"train": range(80), "valid": range(80, 90), "test": range(90, 100)}

# English names spelt out here rather than taken from `calendar`, whose names follow the locale.
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_FIRST_DATE = datetime.date(1950, 1, 1)
_LAST_DATE = datetime.date(2049, 12, 31)

_TOKEN_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"

Example = tuple[str, str]


def _ordinal(day: int) -> str:
    """``1 -> "1st"``, ``2 -> "2nd"``, ``11 -> "11th"``, ``23 -> "23rd"``."""
    suffix = "th" if 11 <= day <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _month(d: datetime.date) -> str:
    """Full English month name of ``d``."""
    return _MONTHS[d.month - 1]


def _weekday(d: datetime.date) -> str:
    """Full English weekday name of ``d``."""
    return _WEEKDAYS[d.weekday()]


# Numeric formats: slashes are US month/day, dots are European day.month. Two-digit
# years are unambiguous because dates span exactly 1950-2049: 50-99 -> 19xx, 00-49 -> 20xx.
_DATE_FORMATS: dict[str, Callable[[datetime.date], str]] = {
    "d_month_y": lambda d: f"{d.day} {_month(d)} {d.year}",
    "month_d_comma_y": lambda d: f"{_month(d)} {d.day}, {d.year}",
    "mon_d_y": lambda d: f"{_month(d)[:3]} {d.day} {d.year}",
    "us_slash": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
    "us_slash_short": lambda d: f"{d.month}/{d.day}/{d.year % 100:02d}",
    "iso": lambda d: d.isoformat(),
    "ymd_slash": lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    "eu_dots": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
    "ordinal_of_month": lambda d: f"{_ordinal(d.day)} of {_month(d)}, {d.year}",
    "weekday_month_d_y": lambda d: f"{_weekday(d)}, {_month(d)} {d.day}, {d.year}",
    "weekday_short_d_mon_y": lambda d: f"{_weekday(d)[:3]} {d.day} {_month(d)[:3]} {d.year}",
    "dd_mon_upper_y": lambda d: f"{d.day:02d} {_month(d)[:3].upper()} {d.year}",
    "month_ordinal_lower_y": lambda d: f"{_month(d).lower()} {_ordinal(d.day)} {d.year}",
    "d_mon_dash_y": lambda d: f"{d.day}-{_month(d)[:3]}-{d.year}",
    "month_upper_d_y": lambda d: f"{_month(d).upper()} {d.day}, {d.year}",
    "the_ordinal_lower": lambda d: f"the {_ordinal(d.day)} of {_month(d).lower()} {d.year}",
}


def _random_date(rng: random.Random) -> datetime.date:
    """A uniformly random date in 1950-01-01 .. 2049-12-31."""
    span = _LAST_DATE.toordinal() - _FIRST_DATE.toordinal()
    return datetime.date.fromordinal(_FIRST_DATE.toordinal() + rng.randint(0, span))


def _dates_example(rng: random.Random) -> Example:
    """A date in a random human format -> ISO ``YYYY-MM-DD``."""
    date = _random_date(rng)
    fmt = rng.choice(sorted(_DATE_FORMATS))
    return _DATE_FORMATS[fmt](date), date.isoformat()


def _reverse_example(rng: random.Random) -> Example:
    """3-12 letter/digit tokens -> the same tokens reversed."""
    tokens = [rng.choice(_TOKEN_ALPHABET) for _ in range(rng.randint(3, 12))]
    return " ".join(tokens), " ".join(reversed(tokens))


def _sort_example(rng: random.Random) -> Example:
    """3-12 integers 0-99 -> the same integers sorted ascending."""
    numbers = [rng.randint(0, 99) for _ in range(rng.randint(3, 12))]
    return " ".join(map(str, numbers)), " ".join(map(str, sorted(numbers)))


def _random_operand(rng: random.Random) -> int:
    """An integer whose digit count is uniform in 1-5, so short operands are common."""
    digits = rng.randint(1, 5)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _addition_example(rng: random.Random) -> Example:
    """``"a+b"`` -> the decimal sum ``a + b``."""
    a, b = _random_operand(rng), _random_operand(rng)
    return f"{a}+{b}", str(a + b)


_GENERATORS: dict[str, Callable[[random.Random], Example]] = {
    "dates": _dates_example,
    "reverse": _reverse_example,
    "sort": _sort_example,
    "addition": _addition_example,
}


def _split_of(source: str) -> str:
    """The split a source string belongs to, from a hash that is stable across runs."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") % 100
    return next(split for split, buckets in _SPLIT_BUCKETS.items() if bucket in buckets)


def _check_args(name: str, split: str, size: int) -> None:
    """Raise ValueError for an unknown task or split or a negative size."""
    if name not in _GENERATORS:
        raise ValueError(f"unknown task '{name}'; valid tasks: {', '.join(TASKS)}")
    if split not in _SPLIT_BUCKETS:
        raise ValueError(f"unknown split '{split}'; valid splits: {', '.join(SPLITS)}")
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")


def make_task(name: str, split: str, size: int, seed: int = 1) -> tuple[list[str], list[str]]:
    """Generate one split of a built-in task, identically on every call and machine.

    The examples of all splits come from one stream seeded by ``(name, seed)``; each
    split keeps the distinct sources hashed to it, in stream order, so a smaller
    ``size`` gives a prefix of a larger one.

    Args:
        name: One of :data:`TASKS`.
        split: One of ``"train"``, ``"valid"``, ``"test"``.
        size: Number of examples to return.
        seed: Seed of the example stream.

    Returns:
        ``(sources, targets)``, two lists of ``size`` strings.

    Raises:
        ValueError: For an unknown task or split, a negative size, or a size larger than
            the task can fill with distinct sources.
    """
    _check_args(name, split, size)
    generate = _GENERATORS[name]
    # A string seed is hashed with SHA-512 by `random`, so the stream is the same everywhere.
    rng = random.Random(f"seq2seq-task/{name}/{seed}")
    sources: list[str] = []
    targets: list[str] = []
    seen: set[str] = set()
    max_draws = 100 * size + 10_000
    for _ in range(max_draws):
        if len(sources) == size:
            break
        source, target = generate(rng)
        if source not in seen and _split_of(source) == split:
            seen.add(source)
            sources.append(source)
            targets.append(target)
    if len(sources) < size:
        raise ValueError(f"task '{name}' cannot supply {size} distinct {split} examples")
    return sources, targets
