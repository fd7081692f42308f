"""The server's Prometheus metrics (``GET /metrics``), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from seq2seq.serve.batcher import Observers

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Requests, errors, latency, queue wait and batch sizes of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "seq2seq_requests",
            "HTTP requests answered, by path and status code",
            ["path", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "seq2seq_errors",
            "Requests answered with a 4xx or 5xx status, by path and status code",
            ["path", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "seq2seq_request_seconds",
            "Time from a request's arrival to its answer, by path",
            ["path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sentences = Counter(
            "seq2seq_sentences", "Sentences translated", ["model"], registry=self.registry
        )
        self.batch_size = Histogram(
            "seq2seq_batch_sentences",
            "Sentences in each decoded batch",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "seq2seq_queue_wait_seconds",
            "Time a request waited before its batch was decoded",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "seq2seq_queue_requests", "Requests waiting to be decoded", registry=self.registry
        )

    def observers(self) -> Observers:
        """The batcher's callbacks into these metrics."""
        return Observers(
            batch=self.batch_size.observe, wait=self.queue_wait.observe, depth=self.queue_depth.set
        )

    def answered(self, path: str, code: int, seconds: float) -> None:
        self.requests.labels(path, str(code)).inc()
        if code >= 400:
            self.errors.labels(path, str(code)).inc()
        self.latency.labels(path).observe(seconds)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
