"""Embedder settings (env prefix `RAG_EMBEDDER_`); the model is `RAG_EMBEDDING_*`, the index
`RAG_STORE_*`."""

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.stage_settings import StageSettings


class EmbedderSettings(StageSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_EMBEDDER_", extra="ignore")

    batch_size: int = Field(
        default=256,
        ge=1,
        description="Max chunk events embedded and written together. Each index write costs "
        "about the same whatever its size, so a backlog drains faster in bigger batches (a "
        "re-sync of unchanged docs twice as fast at 256 as at 64); a lone update is written "
        "at once either way.",
    )
    recent_vectors: int = Field(
        default=20_000,
        ge=0,
        description="Vectors the writer keeps of the docs it last wrote or read, per index "
        "(~1.5 KB each at dim 384; least recently used docs dropped first). An update of a doc "
        "it holds skips the read of the doc's served rows and embeds its new chunks while the "
        "fences load. 0 turns it off.",
    )
    prune_interval_s: float = Field(
        default=0.2,
        gt=0,
        description="How often the writer removes rows and fence markers that new versions "
        "replaced (off the ack path; searches never see them either way).",
    )
    generation_grace_s: float = Field(
        default=300.0,
        ge=0,
        description="How long a retired index generation is still written after `ragstream "
        "switch` (retrievers that have not re-read the registry keep fresh results), before "
        "it is dropped.",
    )
    generation_check_s: float = Field(
        default=10.0, gt=0, description="How often the writer looks for generations to drop."
    )
    optimize_check_s: float = Field(
        default=0.5, description="How often the writer checks whether to compact the index."
    )
    optimize_after_versions: int = Field(
        default=20,
        ge=1,
        description="Compact and re-index a table once it has gained this many versions (each "
        "write batch and each prune adds one or two): unoptimised, searches and writes slow "
        "down (~12 → ~100 ms after 300 writes). Single updates on an idle 1,000-doc index took "
        "p50 64 / p99 121 ms at 20 (checked every 0.5 s), 74 / 166 ms at 100 (every 2 s).",
    )
