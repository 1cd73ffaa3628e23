"""Retriever settings (env prefix `RAG_RETRIEVER_`). Defaults are the measured winners on SciFact
train (docs/evaluation.md)."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.stage_settings import StageSettings
from shared.store.records import FusionMethod, SearchMode


class RetrieverSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_RETRIEVER_", extra="ignore")

    mode: SearchMode = Field(default="hybrid", description="hybrid, dense or bm25.")
    fusion: FusionMethod = Field(default="minmax", description="zscore, minmax or rrf.")
    alpha: float = Field(default=0.5, ge=0.0, le=1.0, description="Weight of the dense list.")
    candidates: int = Field(
        default=300, ge=1, description="Depth read from each list (dense, BM25) before fusion."
    )
    concurrency: int = Field(
        default=8,
        ge=1,
        description="Searches of one batch run at once, at most (the batch's queries are "
        "embedded together first); 1: one after the other.",
    )
    after_wait_s: float = Field(
        default=2.0,
        ge=0.0,
        description="Read-your-writes: how long a query with `after` waits for the index to "
        "serve those doc versions (never past its deadline) before it is searched anyway and "
        "answered `possibly_stale`.",
    )
