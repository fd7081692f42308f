"""Tests for seq2seq.data.tasks: determinism, disjoint splits, correct targets."""

from __future__ import annotations

import datetime

import pytest

from seq2seq.data import tasks
from seq2seq.data.tasks import TASKS, make_task


@pytest.mark.parametrize("name", TASKS)
def test_deterministic(name: str) -> None:
    assert make_task(name, "train", 200, seed=7) == make_task(name, "train", 200, seed=7)


@pytest.mark.parametrize("name", TASKS)
def test_seeds_differ(name: str) -> None:
    assert make_task(name, "train", 50, seed=1) != make_task(name, "train", 50, seed=2)


def test_smaller_size_is_a_prefix() -> None:
    small, large = make_task("sort", "valid", 20), make_task("sort", "valid", 60)
    assert small[0] == large[0][:20] and small[1] == large[1][:20]


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("split,size", [("train", 300), ("valid", 40), ("test", 25), ("test", 0)])
def test_sizes_respected(name: str, split: str, size: int) -> None:
    sources, targets = make_task(name, split, size)
    assert len(sources) == len(targets) == size
    assert len(set(sources)) == size


@pytest.mark.parametrize("name", TASKS)
def test_splits_disjoint_by_source(name: str) -> None:
    train, valid, test = (set(make_task(name, s, 400)[0]) for s in ("train", "valid", "test"))
    assert not train & valid and not train & test and not valid & test
    # Disjointness comes from the source string, so it holds across seeds too.
    assert not set(make_task(name, "test", 400, seed=5)[0]) & train


def test_dates_targets_parse_back() -> None:
    sources, targets = make_task("dates", "train", 1000)
    for source, target in zip(sources, targets, strict=True):
        date = datetime.date.fromisoformat(target)
        assert datetime.date(1950, 1, 1) <= date <= datetime.date(2049, 12, 31)
        assert source in {render(date) for render in tasks._DATE_FORMATS.values()}
        assert len(source) <= 35


def test_dates_weekdays_correct() -> None:
    checked = 0
    for source, target in zip(*make_task("dates", "train", 1000), strict=True):
        expected = datetime.date.fromisoformat(target).strftime("%A")
        named = [day for day in tasks._WEEKDAYS if source.startswith((day[:3] + " ", day + ","))]
        if named:
            assert named == [expected], source
            checked += 1
    assert checked > 50


def test_at_least_12_date_formats_in_1000_train_examples() -> None:
    used = set()
    for source, target in zip(*make_task("dates", "train", 1000), strict=True):
        date = datetime.date.fromisoformat(target)
        used |= {tag for tag, render in tasks._DATE_FORMATS.items() if render(date) == source}
    assert len(used) >= 12


@pytest.mark.parametrize(
    "day,text",
    [
        (datetime.date(2021, 3, 3), "Wednesday, March 3, 2021"),
        (datetime.date(1999, 12, 31), "12/31/99"),
    ],
)
def test_date_formats_examples(day: datetime.date, text: str) -> None:
    assert text in {render(day) for render in tasks._DATE_FORMATS.values()}


@pytest.mark.parametrize(
    "day,text",
    [
        (1, "1st"),
        (2, "2nd"),
        (3, "3rd"),
        (11, "11th"),
        (12, "12th"),
        (13, "13th"),
        (22, "22nd"),
        (31, "31st"),
    ],
)
def test_ordinal(day: int, text: str) -> None:
    assert tasks._ordinal(day) == text


def test_two_digit_years_unambiguous() -> None:
    render = tasks._DATE_FORMATS["us_slash_short"]
    assert render(datetime.date(1950, 1, 2)) == "1/2/50"
    assert render(datetime.date(2049, 1, 2)) == "1/2/49"


def test_reverse_targets() -> None:
    for source, target in zip(*make_task("reverse", "train", 500), strict=True):
        tokens = source.split(" ")
        assert 3 <= len(tokens) <= 12
        assert all(len(t) == 1 and t.isalnum() and not t.isupper() for t in tokens)
        assert target.split(" ") == tokens[::-1]


def test_sort_targets() -> None:
    for source, target in zip(*make_task("sort", "train", 500), strict=True):
        numbers = [int(n) for n in source.split(" ")]
        assert 3 <= len(numbers) <= 12 and all(0 <= n <= 99 for n in numbers)
        assert [int(n) for n in target.split(" ")] == sorted(numbers)


def test_addition_targets() -> None:
    lengths = set()
    for source, target in zip(*make_task("addition", "train", 500), strict=True):
        a, b = source.split("+")
        assert 1 <= len(a) <= 5 and 1 <= len(b) <= 5
        assert a == str(int(a)) and b == str(int(b))  # no leading zeros
        assert int(target) == int(a) + int(b)
        lengths.add(len(a))
    assert lengths == {1, 2, 3, 4, 5}


def test_unknown_task_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown task 'dats'.*dates, reverse, sort, addition"):
        make_task("dats", "train", 10)


def test_unknown_split_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown split 'dev'.*train, valid, test"):
        make_task("dates", "dev", 10)


def test_negative_size() -> None:
    with pytest.raises(ValueError, match="size"):
        make_task("sort", "train", -1)
