"""Retriever stage: `rag.queries` → `rag.retrieved`.

Run: `ragstream run retriever` or `faststream run services.retriever.app:app`.
"""

from functools import partial

from services.retriever.serving import retrieve_from_serving
from services.retriever.settings import RetrieverSettings
from shared.contracts import Answer, Retrieved
from shared.contracts.queries import QUERY
from shared.embedding import load_embedder
from shared.index_pool import IndexPool
from shared.replies import deadline_answer, error_answer
from shared.settings import EmbeddingSettings, StoreSettings
from shared.stage import Stage
from shared.store.factory import open_store
from shared.store.readiness import index_answers

settings = RetrieverSettings()
stage = Stage("retriever", settings)
embedding, store_settings = EmbeddingSettings(), StoreSettings()
embedder = load_embedder(embedding)
store = open_store(store_settings, dim=embedder.dim)
pool = IndexPool(
    stage.redis, stage.streams.indexed, store_settings, embedding, embedder=embedder, store=store
)
stage.subscribe(
    stage.streams.queries,
    QUERY,
    partial(
        retrieve_from_serving,  # the serving generation; read-your-writes waits, then searches
        pool=pool,
        redis=stage.redis,
        streams=stage.streams,
        settings=settings,
    ),
    on_reject=lambda entry, reason: error_answer(entry, reason, stage.streams),
    deadline_of=lambda query: query.deadline,
    on_expired=lambda query: deadline_answer(query, stage.streams, "retriever"),
)
stage.publishes(stage.streams.retrieved, Retrieved, "Each query with its fused top-k candidates.")
stage.publishes(
    stage.streams.answers,
    Answer,
    "Error answers (`error` set) to rejected queries and to queries past their `deadline`, on "
    "the query's `reply_to` if it is `rag.answers` or under it, else on `rag.answers`.",
)
stage.check_ready(index_answers(store))
app = stage.app()
app.after_shutdown(pool.close)
