"""The HTTP application: the API, the page, the limits and the metrics.

:func:`create_app` puts :class:`~seq2seq.serve.registry.ServedModel`s behind FastAPI.
Translation requests are checked and encoded on the event loop, then decoded by the
:class:`~seq2seq.serve.batcher.Batcher`'s threads together with whatever else arrived
at the same time; scoring runs in the thread pool. Every error is a JSON body
``{"error": message, "field": where}`` with a 4xx status (or 500 for a bug), and the
server stays up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from seq2seq.errors import Seq2SeqError
from seq2seq.inference import Translation, Translator
from seq2seq.serve.batcher import Batcher, QueueFull
from seq2seq.serve.metrics import ServeMetrics
from seq2seq.serve.registry import ServedModel
from seq2seq.serve.schemas import (
    ModelsResponse,
    ScoreRequest,
    ScoreResponse,
    TranslateRequest,
    TranslateResponse,
)

log = logging.getLogger("seq2seq")
PAGE = Path(__file__).parent / "page"
PATHS = ("/", "/health", "/metrics", "/v1/models", "/v1/translate", "/v1/score")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how requests are batched (the ``serve`` flags)."""

    max_body: int = 1_000_000  # bytes of a request body
    max_texts: int = 64  # texts (or score pairs) in one request
    max_chars: int = 2_000  # characters in one text
    max_beam: int = 16  # beam size and n-best of one request
    max_output: int = 512  # output tokens decode settings may allow beyond the run's
    timeout: float = 60.0  # seconds a request may wait for its translations
    max_queue: int = 1024  # requests waiting to be decoded; more get 503
    max_wait_ms: float = 5.0  # how long a first request waits for others to batch with
    max_batch: int = 0  # sentences decoded at once (0: the token budget alone)
    decoders: int = 1  # decoder threads


class ApiError(Exception):
    """A request the server refuses: status, message, and the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None, **headers: str):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


def create_app(models: dict[str, ServedModel], limits: Limits | None = None) -> FastAPI:
    """The application serving ``models`` (the first is the default) within ``limits``."""
    limits = limits or Limits()
    metrics = ServeMetrics()
    state: dict[str, Batcher] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["batcher"] = Batcher(
            limits.max_wait_ms / 1000,
            limits.max_batch,
            limits.max_queue,
            limits.decoders,
            metrics.observers(),
        )
        yield
        await run_in_threadpool(state["batcher"].close)  # in-flight requests finish first

    app = FastAPI(
        title="seq2seq",
        summary="Translate, summarize or reply with trained seq2seq models",
        lifespan=lifespan,
    )
    _add_error_handlers(app)
    app.add_middleware(_BodyLimit, limit=limits.max_body)
    app.add_middleware(_Measured, metrics=metrics)

    def pick(name: str | None) -> ServedModel:
        if name is None:
            return next(iter(models.values()))
        if name not in models:
            raise ApiError(404, f"no model {name!r}; this server has {', '.join(models)}", "model")
        return models[name]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(models)}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", response_model=ModelsResponse)
    async def list_models() -> dict[str, Any]:
        return {"models": [served.describe() for served in models.values()]}

    @app.post("/v1/translate", response_model=TranslateResponse, response_model_exclude_none=True)
    async def translate(body: TranslateRequest) -> dict[str, Any]:
        served = pick(body.model)
        _check_texts(body.texts, limits, "texts")
        engine = _engine(served, body, limits)
        texts = _render(engine, body.texts, body.tgt_lang, body.task)
        rows = engine.encode(texts)
        real = [i for i, text in enumerate(texts) if text.strip()]
        _check_lengths(served.engine.decode, engine.decode, [rows[i] for i in real], limits)
        wanted = _constraints(engine, body, texts, real)
        try:
            future = state["batcher"].submit(
                engine, [rows[i] for i in real], body.attention, wanted
            )
        except QueueFull as err:
            busy = f"the server is busy: {err}; try again"
            raise ApiError(503, busy, None, **{"Retry-After": "1"}) from None
        try:
            found = await asyncio.wait_for(asyncio.wrap_future(future), limits.timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"no result within {limits.timeout:g} s (--timeout)") from None
        except Seq2SeqError as err:
            raise ApiError(422, str(err)) from None
        results = [Translation("", 0.0, [], []) for _ in texts]
        for i, translation in zip(real, found, strict=True):
            results[i] = translation
        metrics.sentences.labels(served.name).inc(len(real))
        if body.attention:  # matrices to lists: long enough to keep off the event loop
            answers = await run_in_threadpool(lambda: [_result(t, True) for t in results])
        else:
            answers = [_result(t, False) for t in results]
        return {"model": served.name, "results": answers}

    @app.post("/v1/score", response_model=ScoreResponse)
    async def score(body: ScoreRequest) -> dict[str, Any]:
        served = pick(body.model)
        if not isinstance(served.engine, Translator):
            raise ApiError(400, f"model {served.name!r} ({served.kind} engine) cannot score")
        _check_texts(body.sources, limits, "sources")
        _check_texts(body.targets, limits, "targets")
        if len(body.sources) != len(body.targets):
            raise ApiError(
                422,
                f"{len(body.sources)} sources but {len(body.targets)} targets: give one each",
                "targets",
            )
        sources = _render(served.engine, body.sources, body.tgt_lang, body.task)
        try:
            values = await asyncio.wait_for(
                run_in_threadpool(served.engine.score, sources, body.targets), limits.timeout
            )
        except asyncio.TimeoutError:
            raise ApiError(504, f"no result within {limits.timeout:g} s (--timeout)") from None
        return {"model": served.name, "results": [_scored(v, n) for v, n in values]}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE / "index.html")

    app.mount("/page", StaticFiles(directory=PAGE), name="page")
    return app


# ---------------------------------------------------------------------------- requests


def _check_texts(texts: list[str], limits: Limits, field: str) -> None:
    if len(texts) > limits.max_texts:
        raise ApiError(
            413,
            f"{field}: {len(texts)} in one request; the limit is {limits.max_texts} (--max-texts)",
            field,
        )
    for i, text in enumerate(texts):
        if len(text) > limits.max_chars:
            raise ApiError(
                413,
                f"{field}[{i}]: {len(text)} characters; the limit is {limits.max_chars} "
                "(--max-chars)",
                f"{field}.{i}",
            )


def _check_lengths(base, decode, rows: list[list[int]], limits: Limits) -> None:
    """A request's decode settings may not allow longer outputs than the run's own
    settings or ``limits.max_output`` tokens, whichever is more: one request must not
    hold a decoder for as long as it likes."""
    for row in rows:
        n = len(row) + 1  # EOS included, as the search counts it
        allowed = max(int(n * base.max_len_a + base.max_len_b), limits.max_output)
        asked = max(int(n * decode.max_len_a + decode.max_len_b), decode.min_len)
        if asked > allowed:
            raise ApiError(
                422,
                f"decode settings (max_len_a {decode.max_len_a:g}, max_len_b "
                f"{decode.max_len_b}, min_len {decode.min_len}) allow {asked} output tokens "
                f"for a {n}-token source; this server allows {allowed} (--max-output-len)",
                "decode",
            )


def _engine(served: ServedModel, body: TranslateRequest, limits: Limits):
    """The engine for the request's decode settings."""
    settings = dict(body.decode)
    if body.sample and (body.beam is not None or body.nbest is not None):
        raise ApiError(422, "sample draws one output: it excludes beam and nbest", "sample")
    if body.beam is not None:
        settings.update(method="beam", beam_size=body.beam)
    if body.nbest is not None:
        settings.update(method="beam", n_best=body.nbest)
    if body.sample:
        settings["method"] = "sample"
    try:
        engine = served.engine_for(settings)
    except Seq2SeqError as err:
        raise ApiError(422, str(err), "decode") from None
    d = engine.decode
    if d.method == "beam" and max(d.beam_size, d.n_best) > limits.max_beam:
        raise ApiError(
            422,
            f"beam {d.beam_size} (nbest {d.n_best}) is over this server's limit of "
            f"{limits.max_beam} (--max-beam)",
            "beam",
        )
    if body.attention and not engine.has_attention:
        raise ApiError(422, f"model {served.name!r} has no attention to return", "attention")
    return engine


def _constraints(engine, body: TranslateRequest, texts: list[str], real: list[int]):
    """The target ids of the non-empty texts' constraint phrases (None without any)."""
    if body.constraints is None or not any(body.constraints):
        return None
    if engine.decode.method != "beam":
        raise ApiError(422, "lexical constraints need beam search: set beam", "constraints")
    try:
        encoded = engine.constraint_ids(body.constraints, texts)
    except Seq2SeqError as err:
        raise ApiError(422, str(err), "constraints") from None
    return [encoded[i] for i in real]


def _render(engine, texts: list[str], tgt_lang: str | None, task: str | None) -> list[str]:
    try:
        return engine.render(texts, tgt_lang=tgt_lang, task=task)
    except Seq2SeqError as err:
        raise ApiError(422, str(err), "task" if "--task" in str(err) else "tgt_lang") from None


def _result(t: Translation, attention: bool) -> dict[str, Any]:
    result: dict[str, Any] = {
        "output": t.text,
        "score": t.score,
        "nbest": [{"output": text, "score": score} for text, score in t.nbest],
    }
    if attention:
        result["source_tokens"] = t.src_tokens
        result["output_tokens"] = t.out_tokens
        weights = t.attention.tolist() if t.attention is not None else []
        result["attention"] = [[round(w, 5) for w in row] for row in weights]
    return result


def _scored(value: float, tokens: int) -> dict[str, Any]:
    if math.isnan(value):
        return {"log_prob": None, "tokens": tokens, "per_token": None}
    return {"log_prob": value, "tokens": tokens, "per_token": value / tokens}


# ---------------------------------------------------------------------------- errors


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def refused(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.message, err.field, err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        problems = err.errors()
        first = problems[0]
        field = ".".join(str(part) for part in first["loc"] if part != "body") or None
        if first["type"] == "json_invalid":
            reason = first.get("ctx", {}).get("error", "")
            return _error(422, f"the body is not valid JSON ({reason})", None)
        where = f"{field}: " if field else "the body: "
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        return _error(422, f"{where}{first['msg']}{more}", field)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), None, dict(err.headers or {}))

    @app.exception_handler(Exception)
    async def crashed(request: Request, err: Exception) -> JSONResponse:
        log.exception("a request to %s failed", request.url.path)
        return _error(500, f"the server failed on this request: {type(err).__name__}: {err}", None)


def _error(status: int, message: str, field: str | None, headers: dict | None = None):
    return JSONResponse({"error": message, "field": field}, status, headers=headers)


# ---------------------------------------------------------------------------- middleware


class _BodyLimit:
    """413 for a body over ``limit`` bytes, by its Content-Length or as it streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"the body is over this server's limit of {self.limit} bytes (--max-body)"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _error(413, message, None)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            received = await receive()
            seen += len(received.get("body", b""))
            if seen > self.limit:  # an HTTPException, so that FastAPI passes it on as is
                raise HTTPException(413, message)
            return received

        await self.app(scope, counted, send)


class _Measured:
    """Counts every answer by path and status, and times it."""

    def __init__(self, app, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def sent(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            path = scope["path"] if scope["path"] in PATHS else "other"
            self.metrics.answered(path, status[0], time.perf_counter() - start)
