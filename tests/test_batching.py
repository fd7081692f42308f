"""Token-counted, length-bucketed batching and padding into tensors."""

import logging
import random

import pytest
import torch

from seq2seq.data.batching import (
    Examples,
    collate,
    cut_sources,
    filter_long,
    padding_fraction,
    token_batches,
)
from seq2seq.data.records import SourceCut
from seq2seq.data.vocab import BOS, EOS, PAD

BATCH_TOKENS = 64


def make_examples(n: int = 300, max_len: int = 30, seed: int = 0) -> Examples:
    """Pairs of random ids (>= 4, so never a special); targets about as long as sources."""
    rng = random.Random(seed)

    def sentence(length):
        return [rng.randrange(4, 50) for _ in range(max(1, length))]

    lengths = [rng.randint(1, max_len) for _ in range(n)]
    src = [sentence(k) for k in lengths]
    tgt = [sentence(k + rng.randint(-2, 2)) for k in lengths]
    return Examples(src, tgt)


def row_size(examples: Examples, i: int) -> int:
    """Padded positions one row takes: the longer side plus its EOS/BOS."""
    tgt = len(examples.tgt[i]) if examples.tgt else 0
    return max(len(examples.src[i]), tgt) + 1


def flatten(batches: list[list[int]]) -> list[int]:
    return [i for batch in batches for i in batch]


@pytest.mark.parametrize("rng", [None, random.Random(3)], ids=["sorted", "shuffled"])
def test_batches_respect_the_token_budget(rng):
    examples = make_examples()
    # A few rows longer than the whole budget must still be batched, alone.
    examples.src.extend([[7] * 80, [8] * 100])
    examples.tgt.extend([[9] * 5, [9] * 120])
    batches = token_batches(examples, BATCH_TOKENS, rng=rng, pool_batches=4)
    for batch in batches:
        cost = len(batch) * max(row_size(examples, i) for i in batch)
        assert cost <= BATCH_TOKENS or len(batch) == 1, (batch, cost)
    oversized = [
        b for b in batches if len(b) * max(row_size(examples, i) for i in b) > BATCH_TOKENS
    ]
    assert sorted(i for b in oversized for i in b) == [300, 301]


@pytest.mark.parametrize("rng", [None, random.Random(3)], ids=["sorted", "shuffled"])
def test_every_index_appears_exactly_once(rng):
    examples = make_examples()
    batches = token_batches(examples, BATCH_TOKENS, rng=rng, pool_batches=4)
    assert all(batches)
    assert sorted(flatten(batches)) == list(range(len(examples)))


def test_same_seed_same_batches_other_seed_different():
    examples = make_examples()

    def run(seed):
        return token_batches(examples, BATCH_TOKENS, rng=random.Random(seed), pool_batches=4)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_without_rng_order_is_length_sorted_and_deterministic():
    examples = make_examples()
    batches = token_batches(examples, BATCH_TOKENS)
    order = flatten(batches)
    sizes = [row_size(examples, i) for i in order]
    assert sizes == sorted(sizes)
    # Ties are broken by target minus source length, then by original position (a stable
    # sort).
    expected = sorted(
        range(len(examples)),
        key=lambda i: (row_size(examples, i), len(examples.tgt[i]) - len(examples.src[i])),
    )
    assert order == expected
    assert token_batches(examples, BATCH_TOKENS) == batches


def test_bucketing_pads_less_than_random_batches():
    examples = make_examples()
    bucketed = token_batches(examples, BATCH_TOKENS, rng=random.Random(0), pool_batches=8)
    # The same number of rows per batch, but the rows drawn at random.
    order = list(range(len(examples)))
    random.Random(1).shuffle(order)
    unsorted, start = [], 0
    for batch in bucketed:
        unsorted.append(order[start : start + len(batch)])
        start += len(batch)
    assert sorted(flatten(unsorted)) == list(range(len(examples)))
    bucketed_pad = padding_fraction(examples, bucketed)
    random_pad = padding_fraction(examples, unsorted)
    assert 0.0 <= bucketed_pad < random_pad < 1.0
    assert bucketed_pad < 0.5 * random_pad


@pytest.mark.parametrize("longer", ["src", "tgt"])
def test_rows_of_one_size_are_batched_alike_on_their_shorter_side(longer):
    # Every row has the same padded size (the longer side is always 20 tokens); the other
    # side's lengths are random. Batches must still hold alike lengths on that side.
    rng = random.Random(0)
    short = [[5] * rng.randint(1, 20) for _ in range(300)]
    full = [[6] * 20 for _ in range(300)]
    examples = Examples(full, short) if longer == "src" else Examples(short, full)
    batches = token_batches(examples, 4 * 21, rng=random.Random(1), pool_batches=100)
    assert {len(b) for b in batches} == {4}
    shorter = examples.tgt if longer == "src" else examples.src
    real = sum(len(shorter[i]) for b in batches for i in b)
    padded = sum(len(b) * max(len(shorter[i]) for i in b) for b in batches)
    # By size alone (the shorter side in random order): about 0.3 padding; sorted, 0.01.
    assert 1 - real / padded < 0.05


def test_padding_fraction_by_hand():
    examples = Examples([[5, 6, 7], [5]], [[8], [8, 9]])
    # src rows +EOS: 4 and 2 -> 6 real of 8; tgt rows +BOS/EOS: 2 and 3 -> 5 real of 6.
    assert padding_fraction(examples, [[0, 1]]) == pytest.approx(1 - 11 / 14)
    assert padding_fraction(examples, [[0], [1]]) == 0.0
    assert padding_fraction(examples, []) == 0.0


def test_collate_places_specials_and_padding():
    examples = Examples(src=[[5, 6, 7], [8], [9, 10]], tgt=[[11], [12, 13, 14], [15, 16]])
    batch = collate(examples, [2, 0, 1])
    assert batch.index == [2, 0, 1]
    assert torch.equal(
        batch.src, torch.tensor([[9, 10, EOS, PAD], [5, 6, 7, EOS], [8, EOS, PAD, PAD]])
    )
    assert torch.equal(
        batch.tgt_in, torch.tensor([[BOS, 15, 16, PAD], [BOS, 11, PAD, PAD], [BOS, 12, 13, 14]])
    )
    assert torch.equal(
        batch.tgt_out, torch.tensor([[15, 16, EOS, PAD], [11, EOS, PAD, PAD], [12, 13, 14, EOS]])
    )
    assert batch.src.dtype == batch.tgt_in.dtype == batch.tgt_out.dtype == torch.long
    assert PAD == 0
    assert batch.n_tgt_tokens == 3 + 2 + 4


def test_collate_source_only_examples():
    examples = Examples(src=[[5, 6], [7, 8, 9]], tgt=[])
    batch = collate(examples, [1, 0])
    assert torch.equal(batch.src, torch.tensor([[7, 8, 9, EOS], [5, 6, EOS, PAD]]))
    assert batch.tgt_in is None and batch.tgt_out is None
    assert batch.n_tgt_tokens == 0
    moved = batch.to(torch.device("cpu"))
    assert moved.tgt_in is None and torch.equal(moved.src, batch.src)


def test_source_only_examples_are_batched_by_source_length():
    examples = Examples(src=[[5] * n for n in (9, 1, 5, 3)], tgt=[])
    batches = token_batches(examples, 10)
    assert batches == [[1, 3], [2], [0]]
    assert sorted(flatten(token_batches(examples, 10, rng=random.Random(0)))) == [0, 1, 2, 3]


def test_filter_long_drops_counts_and_warns(caplog):
    examples = Examples(
        src=[[5] * 3, [5] * 6, [5] * 2, [5] * 4], tgt=[[6] * 4, [6] * 1, [6] * 7, [6] * 4]
    )
    with caplog.at_level(logging.WARNING, logger="seq2seq"):
        kept = filter_long(examples, 4, "train")
    assert kept.src == [[5] * 3, [5] * 4]
    assert kept.tgt == [[6] * 4, [6] * 4]
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = record.getMessage()
    assert "train" in message and "dropped 2 of 4" in message and "data.max_len" in message


def test_filter_long_silent_when_nothing_is_dropped(caplog):
    examples = Examples(src=[[5, 6]], tgt=[[7]])
    with caplog.at_level(logging.WARNING, logger="seq2seq"):
        kept = filter_long(examples, 4, "valid")
    assert kept == examples
    assert not caplog.records


def test_filter_long_source_only_examples(caplog):
    examples = Examples(src=[[5] * 2, [5] * 9], tgt=[])
    with caplog.at_level(logging.WARNING, logger="seq2seq"):
        kept = filter_long(examples, 4, "test")
    assert kept == Examples(src=[[5] * 2], tgt=[])
    assert "dropped 1 of 2" in caplog.text


def test_filter_long_with_a_separate_target_limit(caplog):
    examples = Examples(src=[[5] * 9, [5] * 2, [5] * 2], tgt=[[6] * 2, [6] * 5, [6] * 2])
    with caplog.at_level(logging.WARNING, logger="seq2seq"):
        kept = filter_long(examples, None, "train", max_tgt_len=4)  # sources unlimited
    assert kept == Examples(src=[[5] * 9, [5] * 2], tgt=[[6] * 2, [6] * 2])
    assert "dropped 1 of 3" in caplog.text and "data.max_tgt_len" in caplog.text
    assert filter_long(examples, 4, "train", max_tgt_len=9) == Examples(
        [[5] * 2] * 2, [[6] * 5, [6] * 2]
    )


def test_cut_sources_keeps_every_pair_and_logs_the_count(caplog):
    examples = Examples(src=[[5] * 9, [5] * 2], tgt=[[6], [7]])
    with caplog.at_level(logging.INFO, logger="seq2seq"):
        cut = cut_sources(examples, SourceCut(4), "train")
    assert cut == Examples(src=[[5] * 4, [5] * 2], tgt=[[6], [7]])
    assert "cut 1 of 2 sources to 4 tokens (data.max_src_len)" in caplog.text
    assert cut_sources(cut, SourceCut(4), "train") is cut
