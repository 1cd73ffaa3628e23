"""Chunker settings (env prefix `RAG_CHUNKER_`)."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.stage_settings import StageSettings


class ChunkerSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_CHUNKER_", extra="ignore")

    max_tokens: int = Field(
        default=256,
        ge=16,
        description="Token budget of one chunk's embedding text (title and heading path "
        "included), measured with the embedding model's tokenizer.",
    )
    tokenizer_path: Path | None = Field(
        default=None,
        description="tokenizer.json (or its model directory); default: the packaged MiniLM's.",
    )
    max_chunks_per_doc: int = Field(
        default=10_000, ge=1, description="Documents that chunk into more are dead-lettered."
    )
