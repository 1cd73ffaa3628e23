"""Embedder settings (env prefix `RAG_EMBEDDER_`); the model is `RAG_EMBEDDING_*`, the index
`RAG_STORE_*`."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.stage_settings import StageSettings


class EmbedderSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_EMBEDDER_", extra="ignore")

    batch_size: int = Field(
        default=64, ge=1, description="Max chunk events embedded and written together."
    )
    optimize_interval_s: float = Field(
        default=60.0,
        description="How often the writer compacts the index and refreshes its indexes "
        "(every write adds a table version; unoptimised, queries slow down).",
    )
