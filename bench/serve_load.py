"""``seq2seq serve`` under load: dynamic batching against one request at a time, and both
against offline translation of the same sentences.

    python bench/serve_load.py RUN [--requests 2000] [--clients 64] [--faults] [--json]

For each server mode, a fresh ``seq2seq serve RUN`` on a free loopback port; after a short
warm-up, ``--requests`` single-sentence ``POST /v1/translate`` requests from ``--clients``
concurrent clients (the run's test sentences, cycled), then the server is stopped.

- ``batched``: the server's defaults (``--max-wait-ms 5``, token-budget batches);
- ``one-at-a-time``: ``--max-wait-ms 0 --max-batch 1``, every request decoded alone.

``offline`` is the run's Translator (what ``seq2seq translate`` calls) decoding the same
sentences in one call in a fresh process, model loading excluded; ``offline@64`` decodes
them 64 at a time (``--clients``): the largest batches single-sentence requests from that
many clients can make, so the most a server can reach without the HTTP at all. Per mode: requests/s,
sentences/s, latency percentiles, errors (a status other than 200, a transport error, or an
output unlike offline's for that sentence), and the mean batch size from the server's
``/metrics``. ``--faults`` also sends, during the batched load, malformed JSON, texts over
``--max-chars``, bodies over ``--max-body``, clients that hang up mid-request and
``/health`` polls, and reports their answers.
Client and server share the machine's cores, as a loopback benchmark must.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from seq2seq.cli import at_least
from seq2seq.errors import guarded

MODES = {"batched": [], "one-at-a-time": ["--max-wait-ms", "0", "--max-batch", "1"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(run: str, flags: list[str], threads: int, log: Path) -> tuple:
    port = free_port()
    command = [sys.executable, "-m", "seq2seq.cli", "serve", run, "--port", str(port)]
    command += ["--threads", str(threads), "--device", "cpu", "--max-queue", "100000", *flags]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"the server did not start:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the server's batch-size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    total = count = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        if family.name == "seq2seq_batch_sentences":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total = sample.value
                elif sample.name.endswith("_count"):
                    count = sample.value
    return total, count


async def load(url: str, texts: list[str], expected: dict, clients: int, faults: bool) -> dict:
    queue: asyncio.Queue = asyncio.Queue()
    for text in texts:
        queue.put_nowait(text)
    latencies: list[float] = []
    errors: Counter = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def worker() -> None:
            # A client of its own (one connection): one shared pool of 64 connections
            # costs the client more than twice the CPU per request, on the server's cores.
            async with httpx.AsyncClient(base_url=url, timeout=120) as own:
                while not queue.empty():
                    text = queue.get_nowait()
                    started = time.perf_counter()
                    try:
                        response = await own.post("/v1/translate", json={"texts": [text]})
                    except httpx.TransportError as err:
                        errors[type(err).__name__] += 1
                        continue
                    latencies.append(time.perf_counter() - started)
                    if response.status_code != 200:
                        errors[f"http {response.status_code}"] += 1
                    elif response.json()["results"][0]["output"] != expected[text]:
                        errors["output unlike offline"] += 1

        done = asyncio.Event()
        answers: Counter = Counter()

        async def saboteur() -> None:
            port = int(url.rsplit(":", 1)[1])
            i = 0
            while not done.is_set():
                kind = i % 5
                if kind == 0:
                    answers[(await client.post("/v1/translate", content=b"{oops")).status_code] += 1
                elif kind == 1:  # over --max-chars
                    long = {"texts": ["a" * 3000]}
                    answers[(await client.post("/v1/translate", json=long)).status_code] += 1
                elif kind == 4:  # over --max-body
                    big = {"texts": ["a"], "pad": "x" * 1_100_000}
                    answers[(await client.post("/v1/translate", json=big)).status_code] += 1
                elif kind == 2:
                    await asyncio.to_thread(hang_up, port, texts[i % len(texts)], i % 8 == 2)
                    answers["hung up"] += 1
                else:
                    health = (await client.get("/health")).status_code
                    answers[f"health {health}"] += 1
                i += 1
                await asyncio.sleep(0.02)

        started = time.perf_counter()
        sabotage = asyncio.create_task(saboteur()) if faults else None
        await asyncio.gather(*(worker() for _ in range(clients)))
        seconds = time.perf_counter() - started
        done.set()
        if sabotage is not None:
            await sabotage
    result = {
        "seconds": seconds,
        "req_per_s": len(texts) / seconds,
        "sent_per_s": len(texts) / seconds,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p95_ms": 1000 * percentile(latencies, 95),
        "p99_ms": 1000 * percentile(latencies, 99),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
    }
    if faults:
        result["faults"] = {str(k): v for k, v in sorted(answers.items(), key=str)}
    return result


def hang_up(port: int, text: str, partial: bool) -> None:
    """A client that sends a request (or half of one) and disconnects without reading."""
    body = json.dumps({"texts": [text]}).encode()
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall(
            b"POST /v1/translate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + (body[: len(body) // 2] if partial else body)
        )


def percentile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def serve_mode(args, mode: str, texts: list[str], expected: dict, log: Path) -> dict:
    flags = MODES[mode] + (args.server_flags.split() if mode == "batched" else [])
    process, url = start_server(args.run, flags, args.threads, log)
    try:
        warm = texts[: args.clients]
        asyncio.run(load(url, warm, expected, args.clients, faults=False))
        before = batch_stats(url)
        result = asyncio.run(
            load(url, texts, expected, args.clients, args.faults and mode == "batched")
        )
        after = batch_stats(url)
        batches = after[1] - before[1]
        result["mean_batch"] = (after[0] - before[0]) / batches if batches else float("nan")
        result["health_after"] = httpx.get(f"{url}/health").status_code
    finally:
        process.terminate()
        result_code = process.wait(60)
    result["exit_code"] = result_code
    return result


def offline(args, texts: list[str], chunk: int = 0) -> tuple[dict, list[str]]:
    """The Translator on the same sentences, in a fresh process (this one is the client):
    in one call, or (``chunk``) in calls of that many sentences each."""
    with tempfile.TemporaryDirectory() as tmp:
        source, outputs = Path(tmp) / "src.txt", Path(tmp) / "out.txt"
        source.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        command = [sys.executable, __file__, args.run, "--offline", str(source), str(outputs)]
        done = subprocess.run(
            [*command, "--threads", str(args.threads), "--chunk", str(chunk)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise SystemExit(f"offline translation failed:\n{done.stderr[-3000:]}")
        seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
        lines = outputs.read_text(encoding="utf-8").split("\n")[: len(texts)]
    return {"seconds": seconds, "sent_per_s": len(texts) / seconds}, lines


def run_offline(args) -> None:
    import torch

    from seq2seq.data.corpus import read_lines
    from seq2seq.inference import Translator

    torch.set_num_threads(args.threads)
    source, outputs = args.offline
    texts = read_lines(source)
    translator = Translator.from_run(args.run, "best", "cpu")
    translator.translate(texts[:100])  # warm-up, untimed
    size = args.chunk or len(texts)
    started = time.perf_counter()
    results = [
        r for i in range(0, len(texts), size) for r in translator.translate(texts[i : i + size])
    ]
    seconds = time.perf_counter() - started
    Path(outputs).write_text("".join(r.text + "\n" for r in results), encoding="utf-8")
    print(json.dumps({"seconds": seconds}))


def sentences(args) -> list[str]:
    from seq2seq.data.corpus import read_lines

    if args.src:
        pool = read_lines(args.src)
    else:
        from seq2seq.rundir import RunDir

        cfg = RunDir(args.run).config()
        if not cfg.data.test:
            raise SystemExit(f"{args.run}: no data.test in its config; pass --src")
        pool = read_lines(f"{cfg.data.test}.{cfg.data.src_lang}")
    pool = [t for t in pool if t.strip()]
    return [pool[i % len(pool)] for i in range(args.requests)]


def table(results: dict) -> str:
    one = results.get("one-at-a-time", {}).get("sent_per_s")
    off = results["offline"]["sent_per_s"]
    header = (
        f"{'mode':<14} {'req/s':>7} {'sent/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        f"{'errors':>6} {'batch':>6} {'vs one':>7} {'vs offline':>10}"
    )
    lines = [header]
    for mode, r in results.items():
        if mode.startswith("offline"):
            lines.append(
                f"{mode:<14} {'-':>7} {r['sent_per_s']:>7.1f} {'':>8} {'':>8} {'':>8}"
                f" {'':>6} {'':>6} {'':>7} {r['sent_per_s'] / off:>10.2f}"
            )
            continue
        vs_one = f"{r['sent_per_s'] / one:.2f}x" if one else "-"
        lines.append(
            f"{mode:<14} {r['req_per_s']:>7.1f} {r['sent_per_s']:>7.1f} {r['p50_ms']:>8.0f} "
            f"{r['p95_ms']:>8.0f} {r['p99_ms']:>8.0f} {r['errors']:>6} {r['mean_batch']:>6.1f} "
            f"{vs_one:>7} {r['sent_per_s'] / off:>10.2f}"
        )
    for mode, r in results.items():
        if r.get("error_kinds"):
            lines.append(f"{mode} errors: {r['error_kinds']}")
        if "faults" in r:
            lines.append(f"{mode} fault requests answered: {r['faults']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory (its best checkpoint is served)")
    parser.add_argument(
        "--requests", type=at_least(1), default=2000, help="single-sentence requests"
    )
    parser.add_argument("--clients", type=at_least(1), default=64, help="concurrent clients")
    parser.add_argument("--src", help="source sentences (default: the run's data.test)")
    parser.add_argument("--threads", type=at_least(1), default=2, help="CPU threads for decoding")
    parser.add_argument("--modes", default="batched,one-at-a-time", help="server modes")
    parser.add_argument(
        "--server-flags", default="", help="more serve flags for 'batched', e.g. '--max-wait-ms 20'"
    )
    parser.add_argument("--faults", action="store_true", help="bad requests during 'batched'")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--offline", nargs=2, help=argparse.SUPPRESS)  # child: SRC OUT
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.offline:
        run_offline(args)
        return
    texts = sentences(args)
    results: dict = {}
    results["offline"], outputs = offline(args, texts)
    # What a server can batch at best: the clients' sentences, decoded together.
    results[f"offline@{args.clients}"] = offline(args, texts, args.clients)[0]
    expected = dict(zip(texts, outputs, strict=True))
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            if mode not in MODES:
                raise SystemExit(f"unknown mode {mode!r}: use {', '.join(MODES)}")
            results[mode] = serve_mode(args, mode, texts, expected, Path(tmp) / f"{mode}.log")
            print(f"{mode}: {results[mode]}", file=sys.stderr)
    print(json.dumps(results, indent=2) if args.json else table(results))


if __name__ == "__main__":
    sys.exit(guarded(Path(__file__).name, main))
