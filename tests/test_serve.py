"""``seq2seq serve`` over real HTTP: a uvicorn subprocess on a loopback port, an httpx
client, the reverse Transformer run.

Every endpoint; results identical to ``seq2seq translate`` with the same settings, also
when concurrent requests are batched together; n-best and attention shapes; every error
status with its JSON message; the queue bound, the timeout, faults during load, and a
graceful SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
from pathlib import Path

import pytest

from tests.conftest import REVERSE_SOURCES, cli_error, cli_lines, serving

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

SOURCES = REVERSE_SOURCES[:12]


@pytest.fixture(scope="module")
def run(reverse_runs: dict[str, Path]) -> Path:
    return reverse_runs["transformer"]


@pytest.fixture(scope="module")
def server(run: Path, tmp_path_factory: pytest.TempPathFactory):
    with serving(
        [f"reverse={run}"],
        "--max-texts",
        "16",
        "--max-chars",
        "200",
        "--max-body",
        "20000",
        "--max-beam",
        "4",
        log_dir=tmp_path_factory.mktemp("server"),
    ) as server:
        yield server


def post(server, path: str, body, **kwargs):
    return httpx.post(f"{server.url}{path}", json=body, timeout=30, **kwargs)


def translated(server, **body) -> list[dict]:
    response = post(server, "/v1/translate", body)
    assert response.status_code == 200, response.text
    return response.json()["results"]


def cli_translations(run: Path, capsys, *flags) -> list[str]:
    """``seq2seq translate RUN FLAGS`` of SOURCES, through a file."""
    source = run.parent / "serve-sources.txt"
    source.write_text("".join(s + "\n" for s in SOURCES), encoding="utf-8")
    return cli_lines(["translate", run, "-i", source, "--device", "cpu", *flags], capsys)


# ---------------------------------------------------------------------------- endpoints


def test_health_models_docs_and_page(server) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "models": ["reverse"]}
    (model,) = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert model["name"] == "reverse" and model["family"] == "transformer"
    assert model["engine"] == "native" and model["attention"] is True
    assert model["decode"]["method"] == "greedy" and model["target_languages"] == []
    assert "/v1/translate" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and 'id="heatmap"' in page.text
    assert "drawHeatmap" in httpx.get(f"{server.url}/page/page.js").text


def test_greedy_beam_and_nbest_equal_the_command_line(server, run: Path, capsys) -> None:
    greedy = translated(server, texts=SOURCES)
    assert [r["output"] for r in greedy] == cli_translations(run, capsys)
    beam = translated(server, texts=SOURCES, beam=3, nbest=2, decode={"length_penalty": 0.6})
    lines = cli_translations(run, capsys, "--beam", "3", "--nbest", "2", "-d", "length_penalty=0.6")
    assert [
        f"{i} ||| {h['output']} ||| {h['score']:.4f}"
        for i, r in enumerate(beam)
        for h in r["nbest"]
    ] == lines
    for r in beam:
        assert len(r["nbest"]) == 2 and r["nbest"][0]["score"] >= r["nbest"][1]["score"]
        assert r["output"] == r["nbest"][0]["output"] and "attention" not in r


def test_seeded_sampling_equals_the_command_line(server, run: Path, capsys) -> None:
    lines = cli_translations(run, capsys, "--sample", "--seed", "3", "-d", "temperature=2.0")
    for _ in range(2):  # a seed fixes a request's samples, whatever was asked before
        body = {"texts": SOURCES, "sample": True, "decode": {"seed": 3, "temperature": 2.0}}
        assert [r["output"] for r in translated(server, **body)] == lines


def test_equal_settings_share_an_engine_and_a_seed_gets_its_own(run: Path) -> None:
    from seq2seq.serve.registry import load_served

    (served,) = load_served([str(run)], device="cpu").values()
    greedy = served.engine_for({"method": "greedy"})
    assert served.engine_for({}) is greedy and served.engine_for({"method": "greedy"}) is greedy
    beam = served.engine_for({"beam_size": 3, "method": "beam"})
    assert served.engine_for({"method": "beam", "beam_size": 3}) is beam is not greedy
    seeded = {"method": "sample", "seed": 1}
    assert served.engine_for(seeded) is not served.engine_for(seeded)


def test_concurrent_requests_are_batched_and_each_gets_its_own(server, run, capsys) -> None:
    expected = cli_translations(run, capsys)

    async def one(client, text):
        response = await client.post("/v1/translate", json={"texts": [text]})
        return response.json()["results"][0]["output"]

    async def all_at_once():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(*(one(client, t) for t in SOURCES * 4))

    before = _batches(server)
    assert asyncio.run(all_at_once()) == expected * 4
    count, total = (a - b for a, b in zip(_batches(server), before, strict=True))
    assert total == 4 * len(SOURCES) and count < total  # some sentences shared a batch


def _batches(server) -> tuple[float, float]:
    """(batches decoded, sentences in them) from /metrics."""
    text = httpx.get(f"{server.url}/metrics").text
    values = {}
    for line in text.splitlines():
        if line.startswith(("seq2seq_batch_sentences_count", "seq2seq_batch_sentences_sum")):
            name, value = line.split()
            values[name] = float(value)
    return values["seq2seq_batch_sentences_count"], values["seq2seq_batch_sentences_sum"]


def test_attention_comes_with_its_tokens(server) -> None:
    (result,) = translated(server, texts=[SOURCES[0]], attention=True)
    src, out, weights = result["source_tokens"], result["output_tokens"], result["attention"]
    assert src[-1] == "</s>" and src[:-1] == SOURCES[0].split()
    assert out[-1] == "</s>" and " ".join(out[:-1]) == result["output"]
    assert len(weights) == len(out) and all(len(row) == len(src) for row in weights)
    assert all(math.isclose(sum(row), 1.0, abs_tol=1e-3) for row in weights)


def test_empty_texts_give_empty_outputs(server) -> None:
    results = translated(server, texts=["", SOURCES[0], "   "])
    assert [r["output"] for r in results] == [
        "",
        translated(server, texts=[SOURCES[0]])[0]["output"],
        "",
    ]
    assert translated(server, texts=[]) == []


def test_score_equals_the_command_line(server, run: Path, capsys) -> None:
    source, target = run.parent / "score-src.txt", run.parent / "score-tgt.txt"
    outputs = [r["output"] for r in translated(server, texts=SOURCES[:3])]
    source.write_text("".join(s + "\n" for s in SOURCES[:3]))
    target.write_text("".join(t + "\n" for t in outputs))
    lines = cli_lines(["score", run, "--src", source, "--tgt", target, "--device", "cpu"], capsys)
    response = post(server, "/v1/score", {"sources": SOURCES[:3], "targets": outputs})
    assert response.status_code == 200, response.text
    got = [
        f"{r['log_prob']:.4f}\t{r['tokens']}\t{r['per_token']:.4f}"
        for r in response.json()["results"]
    ]
    assert got == lines
    empty = post(server, "/v1/score", {"sources": [""], "targets": ["a"]}).json()["results"]
    assert empty == [{"log_prob": None, "tokens": 0, "per_token": None}]


def test_metrics_count_requests_errors_and_latency(server) -> None:
    post(server, "/v1/translate", {"texts": [SOURCES[0]]})
    post(server, "/v1/translate", {"model": "nope", "texts": ["a"]})
    text = httpx.get(f"{server.url}/metrics").text
    assert 'seq2seq_requests_total{code="200",path="/v1/translate"}' in text
    assert 'seq2seq_errors_total{code="404",path="/v1/translate"}' in text
    assert 'seq2seq_request_seconds_bucket{le="0.005",path="/v1/translate"}' in text
    assert "seq2seq_queue_wait_seconds_count" in text and "seq2seq_queue_requests" in text


# ---------------------------------------------------------------------------- bad requests


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    [
        ({"texts": ["a"] * 17}, 413, "texts", "17 in one request; the limit is 16 (--max-texts)"),
        ({"texts": ["a", "x" * 201]}, 413, "texts.1", "201 characters; the limit is 200"),
        ({"texts": "a b"}, 422, "texts", "valid list"),
        ({"texts": ["a", 3]}, 422, "texts.1", "valid string"),
        ({}, 422, "texts", "Field required"),
        ({"texts": ["a"], "colour": 1}, 422, "colour", "Extra inputs"),
        ({"texts": ["a"], "beam": 0}, 422, "beam", "greater than or equal to 1"),
        ({"texts": ["a"], "beam": 5}, 422, "beam", "over this server's limit of 4 (--max-beam)"),
        ({"texts": ["a"], "beam": 2, "sample": True}, 422, "sample", "excludes beam and nbest"),
        ({"texts": ["a"], "decode": {"lenght_penalty": 1}}, 422, "decode", "length_penalty"),
        ({"texts": ["a"], "decode": {"top_p": 2}}, 422, "decode", "top_p"),
        ({"texts": ["a"], "decode": {"quantize": "int8"}}, 422, "decode", "whole server"),
        (
            {"texts": ["a"], "decode": {"min_len": 100000}},
            422,
            "decode",
            "allow 100000 output tokens for a 2-token source; this server allows 512",
        ),
        ({"texts": ["a"], "decode": {"max_len_b": 10**7}}, 422, "decode", "(--max-output-len)"),
        ({"texts": ["a"], "tgt_lang": "de"}, 422, "tgt_lang", "trained without language tags"),
        (
            {"texts": ["a"], "model": "nope"},
            404,
            "model",
            "no model 'nope'; this server has reverse",
        ),
    ],
)
def test_bad_requests_get_a_json_error(server, body, status, field, message) -> None:
    response = post(server, "/v1/translate", body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["field"] == field and message in error["error"], error


def test_invalid_json_oversized_bodies_and_unknown_paths(server) -> None:
    headers = {"Content-Type": "application/json"}
    response = httpx.post(f"{server.url}/v1/translate", content=b'{"texts": [', headers=headers)
    assert response.status_code == 422 and "not valid JSON" in response.json()["error"]
    big = json.dumps({"texts": ["a"] * 10, "pad": "x" * 30000}).encode()
    response = httpx.post(f"{server.url}/v1/translate", content=big, headers=headers)
    assert response.status_code == 413 and "limit of 20000 bytes" in response.json()["error"]

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(30):
            yield b" " * 1000

    response = httpx.post(f"{server.url}/v1/translate", content=chunks(), headers=headers)
    assert response.status_code == 413, response.text
    response = post(server, "/v1/score", {"sources": ["a", "b"], "targets": ["a"]})
    assert response.status_code == 422 and response.json()["field"] == "targets"
    response = httpx.get(f"{server.url}/v2/translate")
    assert response.status_code == 404 and response.json()["error"] == "Not Found"
    assert httpx.get(f"{server.url}/v1/translate").status_code == 405


def test_faults_during_load_leave_the_others_correct(server, run: Path, capsys) -> None:
    expected = dict(zip(SOURCES, cli_translations(run, capsys), strict=True))
    port = int(server.url.rsplit(":", 1)[1])

    def hang_up(partial: bool) -> None:
        """A client that sends half a request (or a whole one) and disconnects."""
        body = json.dumps({"texts": SOURCES}).encode()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(
                b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + (body[: len(body) // 2] if partial else body)
            )

    async def load():
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def good(text):
                response = await client.post("/v1/translate", json={"texts": [text]})
                return text, response.status_code, response.json()["results"][0]["output"]

            async def bad(i):
                kind = i % 4
                if kind == 0:
                    return (await client.post("/v1/translate", content=b"{oops")).status_code
                if kind == 1:
                    big = {"texts": ["a"], "pad": "x" * 30000}
                    return (await client.post("/v1/translate", json=big)).status_code
                if kind == 2:
                    await asyncio.to_thread(hang_up, i % 8 == 2)
                    return 0
                return (await client.get("/health")).status_code

            return await asyncio.gather(
                *(good(t) for t in SOURCES * 8), *(bad(i) for i in range(40))
            )

    outcomes = asyncio.run(load())
    goods, bads = outcomes[: len(SOURCES) * 8], outcomes[len(SOURCES) * 8 :]
    assert all(status == 200 and out == expected[text] for text, status, out in goods)
    assert sorted(set(bads)) == [0, 200, 413, 422]
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert translated(server, texts=SOURCES[:2])[0]["output"] == expected[SOURCES[0]]


# ---------------------------------------------------------------------------- queue, timeout, stop


def test_a_full_queue_answers_503_and_a_slow_request_504(run: Path, tmp_path: Path) -> None:
    flags = ["--max-queue", "1", "--max-wait-ms", "3000", "--timeout", "1"]
    with serving([run], *flags, log_dir=tmp_path) as server:

        async def two():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                first = asyncio.create_task(client.post("/v1/translate", json={"texts": ["a b"]}))
                await asyncio.sleep(0.5)  # the first waits in the queue (3 s for company)
                second = await client.post("/v1/translate", json={"texts": ["c d"]})
                return await first, second

        first, second = asyncio.run(two())
        assert second.status_code == 503 and second.headers["Retry-After"] == "1"
        assert "busy" in second.json()["error"]
        assert first.status_code == 504 and "within 1 s (--timeout)" in first.json()["error"]
        assert httpx.get(f"{server.url}/health").status_code == 200


def test_sigterm_finishes_the_request_in_flight(run: Path, tmp_path: Path, capsys) -> None:
    expected = cli_translations(run, capsys)
    with serving([run], "--max-wait-ms", "1500", log_dir=tmp_path) as server:

        async def interrupted():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                pending = asyncio.create_task(client.post("/v1/translate", json={"texts": SOURCES}))
                await asyncio.sleep(0.5)  # received, waiting for company in the batcher
                server.process.send_signal(signal.SIGTERM)
                return await pending

        response = asyncio.run(interrupted())
        assert response.status_code == 200
        assert [r["output"] for r in response.json()["results"]] == expected
        assert server.process.wait(30) == 0
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/health", timeout=2)


# ---------------------------------------------------------------------------- other engines


def test_ctranslate2_engine_equals_its_command_line(run: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("ctranslate2")
    export = tmp_path / "ct2"
    cli_lines(["export", run, export], capsys)
    expected = cli_lines(
        ["translate", export, "--engine", "ctranslate2", "-i", _written(tmp_path), "--beam", "2"],
        capsys,
    )
    with serving([export], "--engine", "ctranslate2", log_dir=tmp_path) as server:
        (model,) = httpx.get(f"{server.url}/v1/models").json()["models"]
        assert model["engine"] == "ctranslate2"
        assert [r["output"] for r in translated(server, texts=SOURCES, beam=2)] == expected
        response = post(server, "/v1/score", {"sources": ["a"], "targets": ["a"]})
        assert response.status_code == 400 and "cannot score" in response.json()["error"]


def _written(tmp_path: Path) -> Path:
    path = tmp_path / "sources.txt"
    path.write_text("".join(s + "\n" for s in SOURCES), encoding="utf-8")
    return path


def test_two_models_and_a_clear_startup_error(run, reverse_runs, tmp_path, capsys) -> None:
    with serving([f"a={run}", f"b={reverse_runs['rnn']}"], log_dir=tmp_path) as server:
        names = [m["name"] for m in httpx.get(f"{server.url}/v1/models").json()["models"]]
        assert names == ["a", "b"]
        assert httpx.get(f"{server.url}/v1/models").json()["models"][1]["family"] == "gru"
        a = translated(server, model="a", texts=SOURCES[:3])
        b = translated(server, model="b", texts=SOURCES[:3])
        assert [r["output"] for r in a] == cli_translations(run, capsys)[:3]
        assert [r["output"] for r in b] == cli_translations(reverse_runs["rnn"], capsys)[:3]
    assert "two models are called" in cli_error(["serve", run, run], capsys)
    assert "not a run directory" in cli_error(["serve", tmp_path], capsys)
    refused = cli_error(["serve", run, "--max-batch", "-1"], capsys, usage=True)
    assert "--max-batch: must be at least 0, got -1" in refused
    assert "must be at least 0.001" in cli_error(
        ["serve", run, "--timeout", "0"], capsys, usage=True
    )


def test_constraints_per_text_are_met_and_bad_ones_are_422(server) -> None:
    texts = [SOURCES[0], "", SOURCES[1]]
    wanted = [["z"], ["q"], ["7 7"]]
    results = translated(server, texts=texts, beam=3, constraints=wanted)
    assert results[1]["output"] == ""  # an empty text: an empty output, its phrases unused
    for result, phrases in ((results[0], wanted[0]), (results[2], wanted[2])):
        assert all(f" {p} " in f" {result['output']} " for p in phrases), result
    plain = translated(server, texts=[SOURCES[0]], beam=3)
    assert "z" not in plain[0]["output"].split()  # it was the constraint that put it there
    for body, message in [
        ({"texts": ["a"], "constraints": [["b"]]}, "need beam search"),
        ({"texts": ["a"], "beam": 2, "constraints": [["ü"]]}, "cannot represent"),
        ({"texts": ["a"], "beam": 2, "constraints": [["b"], ["c"]]}, "2 lists of phrases"),
        ({"texts": ["a"], "beam": 2, "constraints": [["b c d e f g h"]]}, "need 7 output"),
    ]:
        response = post(server, "/v1/translate", body)
        assert response.status_code == 422, response.text
        assert message in response.json()["error"], response.json()
