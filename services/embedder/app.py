"""Embedder stage: `rag.chunks` → index + `rag.indexed`.

Run: `ragstream run embedder` or `faststream run services.embedder.app:app`.
"""

from functools import partial

from services.embedder.indexing import index_batch
from services.embedder.settings import EmbedderSettings
from shared import doc_state
from shared.contracts import CHUNK_EVENT, DocIndexed, DocUpsert
from shared.embedding import load_embedder
from shared.settings import EmbeddingSettings, StoreSettings
from shared.stage import Stage
from shared.store.factory import open_store
from shared.store.readiness import index_answers

settings = EmbedderSettings()
stage = Stage("embedder", settings)
embedder = load_embedder(EmbeddingSettings())
store = open_store(StoreSettings(), dim=embedder.dim)
stage.subscribe(
    stage.streams.chunks,
    CHUNK_EVENT,
    partial(
        index_batch,
        embedder=embedder,
        store=store,
        out_stream=stage.streams.indexed,
        docs_stream=stage.streams.docs,
    ),
)
stage.publishes(
    stage.streams.indexed,
    DocIndexed,
    "Freshness acks: the doc version the index now serves (`indexed`, `deleted`), or `stale` "
    "when an older version than the index holds was dropped.",
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
stage.every(
    settings.optimize_check_s,
    partial(store.optimize, min_new_versions=settings.optimize_after_versions),
)
stage.check_ready(index_answers(store))
app = stage.app()
app.after_shutdown(store.close)
