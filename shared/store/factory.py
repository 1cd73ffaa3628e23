"""Pick the index adapter the settings name."""

from shared.settings import StoreSettings
from shared.store.base import Store


def open_store(settings: StoreSettings, dim: int) -> Store:
    """The configured store; it opens its tables lazily, on first use.

    `dim` is the embedding dimension (384 for all-MiniLM-L6-v2); an existing index built with
    another dimension is refused on first use.
    """
    if settings.backend == "lancedb":
        from shared.store.lancedb_store import LanceDBStore

        return LanceDBStore(settings.lancedb_path, dim, table=settings.table, settings=settings)
    if settings.backend == "weaviate":
        from shared.store.weaviate_store import WeaviateStore

        return WeaviateStore(settings, dim)
    raise ValueError(f"unknown store backend {settings.backend!r}")
