"""Reranker settings (env prefix `RAG_RERANKER_`): which backend rescores the fused candidates,
and how long it may take."""

from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.stage_settings import StageSettings

RerankBackend = Literal["none", "cross-encoder", "cohere"]

DEFAULT_COHERE_MODEL = "rerank-v3.5"


class RerankerSettings(StageSettings):
    """How candidates are reranked.

    `backend=none` (default) keeps the retriever's fused order. Whatever the backend, a failure
    or a blown `budget_ms` never fails the query: the fused order is kept and the `Reranked`
    event's `rerank_degraded` says why.
    """

    model_config = SettingsConfigDict(env_prefix="RAG_RERANKER_", extra="ignore")

    backend: RerankBackend = Field(
        default="none",
        description="`none` (fused order), `cross-encoder` (local sentence-transformers "
        "CrossEncoder) or `cohere` (Cohere v2 rerank API, or a compatible gateway).",
    )
    model: str | None = Field(
        default=None,
        description="cross-encoder: model name or local path (required, e.g. "
        "cross-encoder/ms-marco-MiniLM-L6-v2 or a saved directory); cohere: model name, "
        f"default {DEFAULT_COHERE_MODEL}.",
    )
    cohere_base_url: str | None = Field(
        default=None,
        description="Base URL of a Cohere-compatible gateway, e.g. http://gateway:8080 "
        "(requests go to <base>/v2/rerank); unset: api.cohere.com.",
    )
    cohere_api_key: SecretStr | None = Field(
        default=None, description="Cohere API key; unset: the `CO_API_KEY` variable."
    )
    timeout_s: float = Field(
        default=2.0, gt=0, description="Per-request HTTP timeout of the cohere backend, seconds."
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        description="cohere: retries on connection errors, timeouts, 429 and 5xx (never on "
        "other 4xx). All attempts share `budget_ms`.",
    )
    retry_backoff_s: float = Field(
        default=0.05,
        ge=0,
        description="cohere: wait before the first retry; doubled before each next one.",
    )
    budget_ms: float = Field(
        default=250.0,
        gt=0,
        description="Latency budget of one rerank call (all its retries included), for the "
        "top-20 candidates; past it the fused order is kept.",
    )
    top_n: int = Field(
        default=5,
        ge=1,
        description="Most candidates kept after reranking; a query asking for fewer "
        "(`Query.top_n`) gets fewer.",
    )
    max_passage_chars: int = Field(
        default=2000,
        ge=1,
        description="Each candidate's title + text is cut to this many characters before "
        "scoring (the model truncates tokens past its own limit anyway).",
    )
    depth: int = Field(
        default=10,
        ge=1,
        description="How many of the fused candidates the reranker scores (the rest keep their "
        "fused order below them): a MiniLM cross-encoder takes ~160 ms for 10 pairs of 128 "
        "tokens on 2 CPU cores, ~360 ms for 20, against the 250 ms budget.",
    )
    fused_weight: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Weight of the retriever's fused score in the final order: "
        "(1 - w) * z(rerank score) + w * z(fused score), z-scored over the candidates; 0 orders "
        "by the reranker alone. 0.5 measured best with the SciFact-trained cross-encoder "
        "(docs/evaluation.md).",
    )
    device: str = Field(default="cpu", description="cross-encoder: torch device.")
    threads: int | None = Field(
        default=None, ge=1, description="cross-encoder: torch intra-op threads; default: torch's."
    )
    predict_batch_size: int = Field(
        default=32, ge=1, description="cross-encoder: (query, passage) pairs scored per batch."
    )
    max_seq_length: int | None = Field(
        default=None,
        ge=8,
        description="cross-encoder: token limit of one (query, passage) pair; default: the "
        "model's.",
    )
