"""The JSON bodies of the server's API (their OpenAPI schema is at ``/docs``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TranslateRequest(BaseModel):
    """``POST /v1/translate``: texts and, optionally, how to decode them."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="a name from GET /v1/models (default: the first)")
    texts: list[str] = Field(description="sources, one a string; empty ones give empty outputs")
    beam: int | None = Field(None, ge=1, description="beam search with this many hypotheses")
    nbest: int | None = Field(None, ge=1, description="outputs per text (beam search)")
    sample: bool = Field(False, description="sample instead of searching (excludes beam, nbest)")
    attention: bool = Field(False, description="also return tokens and the attention matrix")
    tgt_lang: str | None = Field(None, description="output language of a multilingual model")
    task: str | None = Field(None, description="task of a multi-task model")
    constraints: list[list[str]] | None = Field(
        None,
        description="per text, phrases its output must contain (beam search, native engine)",
    )
    decode: dict[str, Any] = Field(
        default_factory=dict,
        description='other decode settings, e.g. {"length_penalty": 0.6, "top_p": 0.9}',
    )


class Hypothesis(BaseModel):
    output: str
    score: float


class TranslateResult(BaseModel):
    output: str
    score: float = Field(description="what the search ranked by (log-probability based)")
    nbest: list[Hypothesis] = Field(description="every returned output, best first")
    source_tokens: list[str] | None = Field(None, description="with attention: source pieces")
    output_tokens: list[str] | None = Field(None, description="with attention: output pieces")
    attention: list[list[float]] | None = Field(
        None, description="with attention: [output tokens][source tokens], rows sum to 1"
    )


class TranslateResponse(BaseModel):
    model: str
    results: list[TranslateResult]


class ScoreRequest(BaseModel):
    """``POST /v1/score``: the log-likelihood of each target given its source."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    sources: list[str]
    targets: list[str] = Field(description="one per source")
    tgt_lang: str | None = None
    task: str | None = None


class ScoreResult(BaseModel):
    log_prob: float | None = Field(description="log p(target | source); null: empty or too long")
    tokens: int = Field(description="target tokens, EOS included")
    per_token: float | None


class ScoreResponse(BaseModel):
    model: str
    results: list[ScoreResult]


class ModelInfo(BaseModel):
    name: str
    family: str = Field(description="gru, lstm or transformer")
    engine: str = Field(description="native or ctranslate2")
    src_lang: str
    tgt_lang: str
    target_languages: list[str] = Field(description="for tgt_lang (multilingual models)")
    tasks: list[str] = Field(description="for task (multi-task models)")
    attention: bool
    decode: dict[str, Any] = Field(description="the decode settings requests start from")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
