"""Dynamic batching: the sentences of concurrent requests decoded together.

Each request's source rows (encoded already) become one :class:`Job`. Decoder threads
take waiting jobs in arrival order: a thread that finds a job waits up to ``max_wait``
seconds from that job's arrival (or from the moment the thread became free, if later)
for more, or less once the jobs decoded alike (one
engine, i.e. one set of decode settings, and attention or not) fill the engine's token
budget or ``max_batch`` sentences. The rows of the jobs it takes are pooled, cut into
length-sorted batches by the engine's own ``batches`` (and into ``max_batch`` pieces),
decoded with ``decode_batch`` and finished; each job's future then gets its
:class:`~seq2seq.inference.Translation`s in its own order. This is CTranslate2's
``BufferedTranslator`` idea over our engine phases, so both engines serve alike.

Failures stay with their request: a pooled batch that fails is decoded again job by
job, and only the jobs that fail alone get the exception. A job whose future was
cancelled before its turn (its request timed out) is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from seq2seq.inference import Engine, Translation
from seq2seq.inference.engine import Constraints

log = logging.getLogger("seq2seq")


class QueueFull(Exception):
    """The batcher holds ``max_queue`` waiting requests already (or is shutting down)."""


@dataclass
class Job:
    """One request's non-empty source rows and the future of their translations."""

    engine: Engine  # the request's settings: one engine per set of decode settings
    rows: list[list[int]]
    attention: bool
    constraints: Constraints = None  # per row, target-id phrases its outputs contain
    future: Future = field(default_factory=Future)  # -> list[Translation], row order
    arrived: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[int, bool]:
        """Jobs with equal keys are decoded in one batch."""
        return id(self.engine), self.attention

    @property
    def tokens(self) -> int:
        """Source tokens (with EOS) times the hypotheses each row keeps."""
        d = self.engine.decode
        width = d.beam_size if d.method == "beam" else 1
        return sum(len(row) + 1 for row in self.rows) * width


@dataclass
class Observers:
    """What the batcher reports (to the server's metrics): no-ops by default."""

    batch: Callable[[int], None] = lambda sentences: None  # each decoded batch's size
    wait: Callable[[float], None] = lambda seconds: None  # each job's time in the queue
    depth: Callable[[int], None] = lambda jobs: None  # waiting jobs after each change


class Batcher:
    """Decoder threads that merge concurrent jobs into batches.

    Args:
        max_wait: seconds a first job waits for company (0: take what is waiting).
        max_batch: most sentences decoded at once (0: the engine's token budget only).
        max_queue: most jobs waiting; :meth:`submit` raises :class:`QueueFull` beyond.
        threads: decoder threads (each decodes one batch at a time).
        observers: callbacks for metrics.
    """

    def __init__(
        self,
        max_wait: float = 0.005,
        max_batch: int = 0,
        max_queue: int = 1024,
        threads: int = 1,
        observers: Observers | None = None,
    ):
        self.max_wait, self.max_batch, self.max_queue = max_wait, max_batch, max_queue
        self.observers = observers or Observers()
        self._queue: deque[Job] = deque()
        self._changed = threading.Condition()
        self._closing = False
        self._threads = [
            threading.Thread(target=self._work, name=f"seq2seq-decoder-{i}", daemon=True)
            for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self,
        engine: Engine,
        rows: list[list[int]],
        attention: bool = False,
        constraints: Constraints = None,
    ) -> Future:
        """Queue one request's rows (and each row's lexical constraints); the future gets
        their translations in row order.

        Raises:
            QueueFull: ``max_queue`` jobs wait already, or the batcher is closing.
        """
        job = Job(engine, rows, attention, constraints)
        if not rows:
            job.future.set_result([])
            return job.future
        with self._changed:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are waiting (--max-queue)")
            self._queue.append(job)
            self.observers.depth(len(self._queue))
            self._changed.notify()
        return job.future

    def close(self) -> None:
        """Decode what is queued, then stop the threads (new jobs are refused)."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()

    # ------------------------------------------------------------------ the threads

    def _work(self) -> None:
        while (jobs := self._gather(time.monotonic())) is not None:
            started = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            now = time.monotonic()
            for job in started:
                self.observers.wait(now - job.arrived)
            if started:
                self._decode(started)

    def _gather(self, free: float) -> list[Job] | None:
        """Wait for a job, then for company until the deadline or a full batch; take the
        jobs decoded like the first. None once closed and drained.

        The deadline is ``max_wait`` after the first job arrived or after this thread
        became ``free``, whichever is later: under load, the clients answered by the
        last batch get that long to send their next requests and join the next one."""
        with self._changed:
            while True:
                while not self._queue:
                    if self._closing:
                        return None
                    self._changed.wait()
                # Another thread may take the jobs while this one waits: look again at
                # the queue (and its first job's deadline) after every wake-up.
                start = max(self._queue[0].arrived, free)
                remaining = start + self.max_wait - time.monotonic()
                if self._closing or remaining <= 0 or self._full():
                    break
                self._changed.wait(remaining)
            jobs = self._take()
            self.observers.depth(len(self._queue))
            return jobs

    def _alike(self) -> list[Job]:
        """The waiting jobs decoded like the first, in arrival order, up to one batch."""
        first = self._queue[0]
        budget = first.engine.decode.batch_tokens
        jobs, tokens, sentences = [], 0, 0
        for job in self._queue:
            if job.key != first.key:
                continue
            if jobs and (tokens >= budget or (self.max_batch and sentences >= self.max_batch)):
                break
            jobs.append(job)
            tokens, sentences = tokens + job.tokens, sentences + len(job.rows)
        return jobs

    def _full(self) -> bool:
        jobs = self._alike()
        tokens = sum(job.tokens for job in jobs)
        sentences = sum(len(job.rows) for job in jobs)
        budget = jobs[0].engine.decode.batch_tokens
        return tokens >= budget or bool(self.max_batch and sentences >= self.max_batch)

    def _take(self) -> list[Job]:
        jobs = self._alike()
        taken = {id(job) for job in jobs}
        self._queue = deque(job for job in self._queue if id(job) not in taken)
        return jobs

    def _decode(self, jobs: list[Job]) -> None:
        """Decode the jobs' rows pooled; on a failure, each job on its own."""
        try:
            results = self._translate(jobs)
        except Exception as err:
            if len(jobs) == 1:
                log.warning("a request failed in decoding: %s", err)
                jobs[0].future.set_exception(err)
                return
            for job in jobs:
                self._decode([job])
            return
        for job, found in zip(jobs, results, strict=True):
            job.future.set_result(found)

    def _translate(self, jobs: list[Job]) -> list[list[Translation]]:
        """Each job's translations, its rows decoded in batches pooled with the others'."""
        engine, attention = jobs[0].engine, jobs[0].attention
        owners = [(j, r) for j, job in enumerate(jobs) for r in range(len(job.rows))]
        rows = [jobs[j].rows[r] for j, r in owners]
        wanted = None
        if any(job.constraints for job in jobs):  # rows of jobs without any get none
            wanted = [jobs[j].constraints[r] if jobs[j].constraints else [] for j, r in owners]
        out: list[list[Translation | None]] = [[None] * len(job.rows) for job in jobs]
        for batch in self._batches(engine, rows):
            self.observers.batch(len(batch))
            mine = None if wanted is None else [wanted[i] for i in batch]
            hyps = engine.decode_batch([rows[i] for i in batch], attention, mine)
            for i, found in zip(batch, hyps, strict=True):
                j, r = owners[i]
                out[j][r] = engine.finish(rows[i], found)
        return out  # type: ignore[return-value]  (every row is filled)

    def _batches(self, engine: Engine, rows: list[list[int]]) -> list[list[int]]:
        batches = engine.batches(rows)
        if not self.max_batch:
            return batches
        size = self.max_batch
        return [batch[i : i + size] for batch in batches for i in range(0, len(batch), size)]
