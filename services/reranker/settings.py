"""Reranker settings (env prefix `RAG_RERANKER_`): which backend rescores the fused candidates,
and how long it may take."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.settings import OnnxPrecision
from shared.stage_settings import StageSettings

RerankBackend = Literal["none", "cross-encoder", "cohere"]
CrossEncoderRuntime = Literal["torch", "onnx"]

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
    runtime: CrossEncoderRuntime = Field(
        default="torch",
        description="cross-encoder: `torch` (sentence-transformers) or `onnx` (ONNX Runtime, no "
        "torch needed: the export of `model` by `ragstream export-onnx --cross-encoder`, read "
        "from `onnx_path`).",
    )
    onnx_path: Path | None = Field(
        default=None,
        description="cross-encoder on onnx: the export directory; default: where `export-onnx "
        "--cross-encoder --model <model>` writes (`~/.cache/ragstream/onnx/cross-encoder-"
        "<folder>-<hash of the model path>`).",
    )
    onnx_precision: OnnxPrecision = Field(
        default="fp32",
        description="cross-encoder on onnx: `fp32` or `int8` (written by `export-onnx --int8`).",
    )
    device: str = Field(
        default="cpu", description="cross-encoder: torch device (onnx: always the CPU)."
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        description="cross-encoder: intra-op threads of torch or ONNX Runtime; default: the "
        "runtime's.",
    )
    predict_batch_size: int = Field(
        default=32,
        ge=1,
        description="cross-encoder: (query, passage) pairs scored per batch (torch and ONNX "
        "fp32; ONNX int8 scores one pair at a time, so a score does not depend on the others).",
    )
    chunk_pairs: int = Field(
        default=8,
        ge=1,
        description="cross-encoder: pairs scored between two checks for a call given up (its "
        "budget or its query's deadline ran out): abandoned scoring holds the model for at most "
        "this many more pairs.",
    )
    concurrency: int = Field(
        default=4,
        ge=1,
        description="Queries of one batch reranked at once, at most; 1: one after the other. "
        "Cohere requests overlap; a cross-encoder still scores one call at a time, first come "
        "first served, and a call's wait counts against its `budget_ms`: under load more "
        "queries keep the fused order, rather than waiting (and missing deadlines) behind "
        "each other.",
    )
    max_seq_length: int | None = Field(
        default=None,
        ge=8,
        description="cross-encoder: token limit of one (query, passage) pair; default: the "
        "model's.",
    )
