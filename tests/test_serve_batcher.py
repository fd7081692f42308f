"""The dynamic batcher: concurrent jobs pooled into batches, results back in order,
failures and cancellations kept to their own request, the queue bound and shutdown.

A recording engine stands in for a model: its "translation" of a row is the row's ids
joined, so every result can be checked against its own input.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError

import pytest

from seq2seq.config import DecodeConfig
from seq2seq.inference import Translation
from seq2seq.search import Hypothesis
from seq2seq.serve.batcher import Batcher, Observers, QueueFull

FAIL = 99  # a row holding this id makes decode_batch raise


class RecordingEngine:
    """Decodes a row to itself; records each batch; may hold decoding until released."""

    def __init__(self, batch_tokens: int = 1000, method: str = "greedy"):
        self.decode = DecodeConfig(batch_tokens=batch_tokens, method=method)
        self.calls: list[list[list[int]]] = []
        self.release = threading.Event()
        self.release.set()

    def batches(self, rows: list[list[int]]) -> list[list[int]]:
        return [sorted(range(len(rows)), key=lambda i: len(rows[i]))]

    def decode_batch(self, rows, attention=False, constraints=None):
        self.release.wait(10)
        self.calls.append(rows)
        if any(FAIL in row for row in rows):
            raise RuntimeError("this batch holds a bad row")
        return [[Hypothesis(row, -float(len(row)), 0.0, None)] for row in rows]

    def finish(self, src_ids, hyps):
        text = " ".join(map(str, hyps[0].tokens))
        return Translation(text, hyps[0].score, [], [], None, [(text, hyps[0].score)])


def texts(future) -> list[str]:
    return [t.text for t in future.result(10)]


def test_concurrent_jobs_share_one_batch_and_keep_their_order() -> None:
    engine, sizes = RecordingEngine(), []
    batcher = Batcher(max_wait=0.5, observers=Observers(batch=sizes.append))
    jobs = [[[i, 1], [i, 2, 3]] for i in range(5)]
    futures = [batcher.submit(engine, rows) for rows in jobs]
    try:
        for rows, future in zip(jobs, futures, strict=True):
            assert texts(future) == [" ".join(map(str, r)) for r in rows]
    finally:
        batcher.close()
    assert sizes == [10] and len(engine.calls) == 1


def test_a_full_budget_flushes_without_waiting() -> None:
    engine = RecordingEngine(batch_tokens=6)  # two rows of 2 tokens + EOS fill it
    batcher = Batcher(max_wait=30.0)
    started = time.monotonic()
    futures = [batcher.submit(engine, [[4, 5]]) for _ in range(2)]
    try:
        assert [texts(f) for f in futures] == [["4 5"], ["4 5"]]
    finally:
        batcher.close()
    assert time.monotonic() - started < 10


def test_max_batch_one_decodes_each_sentence_alone() -> None:
    engine, sizes = RecordingEngine(), []
    batcher = Batcher(max_wait=0.0, max_batch=1, observers=Observers(batch=sizes.append))
    futures = [batcher.submit(engine, [[4, i], [5, i]]) for i in range(3)]
    try:
        assert [texts(f) for f in futures] == [[f"4 {i}", f"5 {i}"] for i in range(3)]
    finally:
        batcher.close()
    assert sizes == [1] * 6


def test_different_settings_are_never_pooled() -> None:
    greedy, beam = RecordingEngine(), RecordingEngine(method="beam")
    batcher = Batcher(max_wait=0.3)
    a, b = batcher.submit(greedy, [[4]]), batcher.submit(beam, [[5]])
    c = batcher.submit(greedy, [[6]], attention=True)
    try:
        assert (texts(a), texts(b), texts(c)) == (["4"], ["5"], ["6"])
    finally:
        batcher.close()
    assert greedy.calls == [[[4]], [[6]]] and beam.calls == [[[5]]]


def test_a_failing_request_fails_alone() -> None:
    engine = RecordingEngine()
    batcher = Batcher(max_wait=0.3)
    good, bad = batcher.submit(engine, [[4, 5]]), batcher.submit(engine, [[FAIL]])
    also_good = batcher.submit(engine, [[6]])
    try:
        assert texts(good) == ["4 5"] and texts(also_good) == ["6"]
        with pytest.raises(RuntimeError, match="bad row"):
            bad.result(10)
    finally:
        batcher.close()


def test_a_cancelled_request_is_not_decoded() -> None:
    engine = RecordingEngine()
    batcher = Batcher(max_wait=0.5)
    dropped, kept = batcher.submit(engine, [[4]]), batcher.submit(engine, [[5]])
    assert dropped.cancel()  # its client gave up while it waited
    try:
        assert texts(kept) == ["5"]
        with pytest.raises(CancelledError):
            dropped.result(1)
    finally:
        batcher.close()
    assert engine.calls == [[[5]]]


def test_a_full_queue_refuses_and_close_drains() -> None:
    engine = RecordingEngine()
    engine.release.clear()  # the decoder thread holds the first batch
    waits: list[float] = []
    batcher = Batcher(max_wait=0.0, max_queue=2, observers=Observers(wait=waits.append))
    first = batcher.submit(engine, [[4]])
    deadline = time.monotonic() + 10
    while not engine.calls and not first.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    queued = [batcher.submit(engine, [[5]]), batcher.submit(engine, [[6]])]
    with pytest.raises(QueueFull, match="2 requests are waiting"):
        batcher.submit(engine, [[7]])
    engine.release.set()
    batcher.close()  # what was queued is still decoded
    assert [texts(f) for f in [first, *queued]] == [["4"], ["5"], ["6"]]
    assert len(waits) == 3
    with pytest.raises(QueueFull, match="shutting down"):
        batcher.submit(engine, [[8]])


def test_no_rows_need_no_decoding() -> None:
    batcher = Batcher()
    try:
        assert batcher.submit(RecordingEngine(), []).result(1) == []
    finally:
        batcher.close()


def test_several_decoder_threads_share_the_queue() -> None:
    # Threads that wait for company while another takes the jobs must look again
    # rather than take from an empty queue (and die).
    engine = RecordingEngine(batch_tokens=12)
    batcher = Batcher(max_wait=0.01, threads=4)
    results: dict[int, list[str]] = {}

    def client(k: int) -> None:
        for i in range(25):
            rows = [[k, i], [k, i, 7]]
            results[k * 100 + i] = texts(batcher.submit(engine, rows))
            time.sleep(0.001 * (k % 3))

    clients = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    try:
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(60)
        assert all(thread.is_alive() for thread in batcher._threads)
    finally:
        batcher.close()
    assert results == {k * 100 + i: [f"{k} {i}", f"{k} {i} 7"] for k in range(8) for i in range(25)}


def test_a_thread_just_freed_waits_for_the_clients_it_answered() -> None:
    # B waited through A's decoding; once free, the thread still gives C (sent right
    # after A's answer) max_wait to join B, rather than taking B alone at once.
    engine = RecordingEngine()
    engine.release.clear()
    batcher = Batcher(max_wait=0.4)
    try:
        a = batcher.submit(engine, [[1]])
        time.sleep(0.6)  # A waited 0.4 s for company and is being decoded (held)
        b = batcher.submit(engine, [[2]])
        time.sleep(0.6)  # B's own deadline passes while the thread is busy
        engine.release.set()
        assert texts(a) == ["1"]
        c = batcher.submit(engine, [[3]])
        assert (texts(b), texts(c)) == (["2"], ["3"])
    finally:
        batcher.close()
    assert engine.calls == [[[1]], [[2], [3]]]
