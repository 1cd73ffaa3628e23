"""The index an evaluation queries: the cached LanceDB directory, or a Weaviate collection.

The Weaviate collection is loaded from the cached LanceDB index — the same chunks and vectors,
written through `WeaviateStore.apply` (the commit protocol the embedder uses) — so both stores
are measured on identical data and the corpus is embedded once. It is kept, named after the
index's cache key, in the server at `WEAVIATE_URL` or in a local one under the cache directory.
"""

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from ragstream.evaluation.indexing import IndexInfo
from ragstream.weaviate_server import configured_or_local
from shared.settings import HybridMethod
from shared.store.base import Store
from shared.store.lancedb_store import LanceDBStore
from shared.store.weaviate_store import SCHEMA_VERSION, WeaviateStore

Backend = Literal["lancedb", "weaviate"]
COPY_BATCH = 256


@contextlib.asynccontextmanager
async def eval_store(
    backend: Backend,
    info: IndexInfo,
    dim: int,
    *,
    cache_dir: Path,
    hybrid: HybridMethod | None = None,
) -> AsyncIterator[Store]:
    """The store to query for `info`'s index, on `backend`; closed on exit."""
    if backend == "lancedb":
        lance = LanceDBStore(info.path, dim)
        try:
            yield lance
        finally:
            await lance.close()
        return
    with configured_or_local(cache_dir / "weaviate") as base:
        settings = base.model_copy(
            update={
                "table": f"Eval_{info.key}_s{SCHEMA_VERSION}",
                "weaviate_hybrid": hybrid or base.weaviate_hybrid,
            }
        )
        store = WeaviateStore(settings, dim)
        try:
            if await store.count_chunks() != info.chunks:
                await store.index.drop()
                store = WeaviateStore(settings, dim)
                await copy_index(LanceDBStore(info.path, dim), store)
            yield store
        finally:
            await store.close()


async def copy_index(source: LanceDBStore, target: Store) -> int:
    """Apply every doc version of `source` to `target`; the number of rows copied."""
    try:
        docs = await source.index.export()
    finally:
        await source.close()
    for start in range(0, len(docs), COPY_BATCH):
        await target.apply(docs[start : start + COPY_BATCH])
    return sum(len(d.chunks) for d in docs)
