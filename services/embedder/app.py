"""Embedder stage: `rag.chunks` → index + `rag.indexed`.

Run: `ragstream run embedder` or `faststream run services.embedder.app:app`.
"""

from datetime import timedelta
from functools import partial

from services.embedder.generations import write_batch
from services.embedder.settings import EmbedderSettings
from shared import doc_state
from shared.contracts import CHUNK_EVENT, DocIndexed, DocUpsert
from shared.embedding import load_embedder
from shared.index_pool import IndexPool
from shared.settings import EmbeddingSettings, StoreSettings
from shared.stage import Stage
from shared.store.factory import open_store
from shared.store.readiness import index_answers

settings = EmbedderSettings()
stage = Stage("embedder", settings)
embedding, store_settings = EmbeddingSettings(), StoreSettings()
embedder = load_embedder(embedding)
store = open_store(store_settings, dim=embedder.dim)
pool = IndexPool(
    stage.redis,
    stage.streams.indexed,
    store_settings,
    embedding,
    embedder=embedder,
    store=store,
    recent_vectors=settings.recent_vectors,
)
stage.subscribe(
    stage.streams.chunks,
    CHUNK_EVENT,
    partial(
        write_batch, pool=pool, out_stream=stage.streams.indexed, docs_stream=stage.streams.docs
    ),
)
stage.publishes(
    stage.streams.indexed,
    DocIndexed,
    "Freshness acks: the doc version the index now serves (`indexed`, `deleted`, `unchanged`), "
    "or `stale` when an older version than the index holds was dropped.",
)
stage.publishes(
    stage.streams.docs,
    DocUpsert,
    "A DocUnchanged whose base version the index no longer serves, sent back with `force` set "
    "to be chunked after all.",
)
stage.project(
    stage.streams.indexed, partial(doc_state.record, indexed_stream=stage.streams.indexed)
)
stage.every(settings.prune_interval_s, pool.prune)
stage.every(
    settings.optimize_check_s,
    partial(pool.optimize, min_new_versions=settings.optimize_after_versions),
)
stage.every(
    settings.generation_check_s,
    partial(pool.drop_expired, timedelta(seconds=settings.generation_grace_s)),
)
stage.check_ready(index_answers(store))
app = stage.app()
app.after_shutdown(pool.close)
