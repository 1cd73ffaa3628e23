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
