"""What several test files share: tiny models and data, trained runs, and the CLI drivers.

The two ``reverse`` runs (a GRU with attention and a Transformer) are trained once per
session, in-process, on the built-in ``reverse`` task with a word tokenizer, long enough
(a few hundred steps, ~15 s on one core) that most of their outputs are right: agreement
checks (int8 vs fp32, bf16 vs fp32) then mean something. Two more runs of one step each
have other vocabularies, for the ensemble checks. The Translator, the Python API and the
``seq2seq`` command are all tested on these runs (test_translator, test_api, test_cli),
and ``serving`` starts ``seq2seq serve`` on one in a subprocess (test_serve, test_page).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from seq2seq.api import Seq2Seq
from seq2seq.cli import main
from seq2seq.config import ModelConfig
from seq2seq.data.batching import Examples
from seq2seq.data.tasks import make_task
from seq2seq.inference import Translation, Translator
from seq2seq.models.build import build_model

# ---------------------------------------------------------------------------- torch threads


@contextmanager
def same_threads() -> Iterator[None]:
    """Give torch's (process-wide) thread count back as it was: in-process training sets
    it from the config's ``train.threads``."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _same_threads() -> Iterator[None]:
    with same_threads():
        yield


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for a whole module: several Python threads (or another job)
    share the CPU there, and OpenMP workers spin while they wait."""
    with same_threads():
        torch.set_num_threads(1)
        yield


# ---------------------------------------------------------------------------- tiny models and data

TINY_VOCAB = 40  # source and target vocabulary of tiny_transformer() and random_examples()


def tiny_transformer(dropout: float = 0.0) -> torch.nn.Module:
    """A small tied-embedding Transformer with fixed initial weights (seed 0)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="transformer",
        hidden_dim=32,
        heads=4,
        ff_dim=64,
        enc_layers=2,
        dec_layers=2,
        dropout=dropout,
        tie_embeddings=True,
    )
    return build_model(cfg, TINY_VOCAB, TINY_VOCAB)


def random_examples(n: int = 24, seed: int = 0) -> Examples:
    """``n`` pairs of random token ids (2-9 tokens each side, no special ids)."""
    rng = random.Random(seed)
    src = [[rng.randrange(4, TINY_VOCAB) for _ in range(rng.randint(2, 9))] for _ in range(n)]
    tgt = [[rng.randrange(4, TINY_VOCAB) for _ in range(rng.randint(2, 9))] for _ in range(n)]
    return Examples(src, tgt)


# ---------------------------------------------------------------------------- the reverse runs

ARCHS = {  # model section and training steps of each run
    "rnn": ({"emb_dim": 32, "hidden_dim": 64}, 200),
    "transformer": (
        {
            "arch": "transformer",
            "hidden_dim": 64,
            "heads": 4,
            "ff_dim": 128,
            "enc_layers": 2,
            "dec_layers": 2,
            "max_positions": 64,
        },
        300,
    ),
}
MAX_LEN_A, MAX_LEN_B = 1.0, 4
# Unseen by the runs (the same task seed: the test split is disjoint from train).
REVERSE_SOURCES, REVERSE_TARGETS = make_task("reverse", "test", 40, 1)


def reverse_sections(model: dict, steps: int, **data) -> dict:
    """Config sections of one reverse run: ``model`` keys, ``steps`` updates, ``data`` keys."""
    return {
        "data": {"task": "reverse", "task_size": 2000, "tokenizer": "word", "max_len": 40, **data},
        "model": {"dropout": 0.0, **model},
        "train": {
            "seed": 1,
            "batch_tokens": 600,
            "lr": 3e-3,
            "label_smoothing": 0.0,
            "max_steps": steps,
            "valid_every": max(steps // 2, 1),
            "log_every": 100,
            "valid_bleu": False,
            "device": "cpu",
            "threads": 1,
        },
        "decode": {"max_len_a": MAX_LEN_A, "max_len_b": MAX_LEN_B},
    }


def texts_of(results: list[Translation]) -> list[str]:
    return [r.text for r in results]


def agreement(a: list[str], b: list[str]) -> float:
    """The fraction of positions where the two lists hold the same text."""
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


@pytest.fixture(scope="session")
def reverse_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained reverse runs by architecture."""
    root = tmp_path_factory.mktemp("reverse")
    with same_threads():
        for name, (model, steps) in ARCHS.items():
            Seq2Seq(**reverse_sections(model, steps)).fit(out=root / name)
    return {name: root / name for name in ARCHS}


@pytest.fixture(scope="session")
def foreign_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One-step runs with other target vocabularies: ``sort`` (another size) and
    ``reshuffled`` (the same pieces and size, in another frequency order)."""
    root = tmp_path_factory.mktemp("foreign")
    model = ARCHS["rnn"][0]
    with same_threads():
        Seq2Seq(**reverse_sections(model, 1, task="sort", task_size=200)).fit(out=root / "sort")
        reshuffled = reverse_sections(model, 1, task_seed=7, task_size=400)
        Seq2Seq(**reshuffled).fit(out=root / "reshuffled")
    return {"sort": root / "sort", "reshuffled": root / "reshuffled"}


@pytest.fixture(scope="session")
def reverse_translators(reverse_runs: dict[str, Path]) -> dict[str, Translator]:
    """A greedy CPU Translator of each reverse run (configure() copies, never changes, it)."""
    return {name: Translator.from_run(run, device="cpu") for name, run in reverse_runs.items()}


@pytest.fixture(scope="session")
def greedy_outputs(reverse_translators: dict[str, Translator]) -> dict[str, list[Translation]]:
    """Each reverse run's greedy translations of REVERSE_SOURCES."""
    return {name: t.translate(REVERSE_SOURCES) for name, t in reverse_translators.items()}


@pytest.fixture(params=sorted(ARCHS))
def arch(request: pytest.FixtureRequest) -> str:
    """Each architecture of the reverse runs in turn."""
    return request.param


# ---------------------------------------------------------------------------- the command line


def run_cli(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``seq2seq ARGV`` in-process (arguments made strings): (exit status, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def cli_lines(argv: list, capsys: pytest.CaptureFixture) -> list[str]:
    """Run a command that must succeed; return the lines it printed."""
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "Traceback" not in err
    return out.split("\n")[:-1]


def cli_error(argv: list, capsys: pytest.CaptureFixture, usage: bool = False) -> str:
    """Run a command that must fail as a user error; return its one-line message.

    Args:
        usage: the error may also be argparse's own (it exits instead of returning).
    """
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        if not usage:
            raise
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error: " in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"seq2seq {argv[0]}: error: "), errors[0]
    return errors[0]


# ---------------------------------------------------------------------------- a real server


class Server:
    """``seq2seq serve`` in a subprocess on a free loopback port."""

    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log

    def output(self) -> str:
        """What the server printed so far (its log)."""
        return self.log.read_text(encoding="utf-8", errors="replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(runs: list, *flags: str, log_dir: Path) -> Iterator[Server]:
    """Start ``seq2seq serve RUNS FLAGS`` (one decoding thread), wait until /health answers,
    and stop it (SIGTERM) afterwards."""
    import httpx

    port = free_port()
    log = log_dir / f"server-{port}.log"
    argv = [sys.executable, "-m", "seq2seq.cli", "serve", *map(str, runs), "--port", str(port)]
    with log.open("w") as sink:
        process = subprocess.Popen(
            [*argv, "--threads", "1", *flags], stdout=sink, stderr=subprocess.STDOUT
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"the server exited:\n{server.output()}"
            assert time.monotonic() < deadline, f"the server did not start:\n{server.output()}"
            try:
                if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
