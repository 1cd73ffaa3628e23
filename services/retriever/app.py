"""Retriever stage: `rag.queries` → `rag.retrieved`.

Run: `ragstream run retriever` or `faststream run services.retriever.app:app`.
"""

from functools import partial

from services.retriever.read_your_writes import retrieve_after
from services.retriever.retrieval import retrieve_batch
from services.retriever.settings import RetrieverSettings
from shared.contracts import Answer, Retrieved
from shared.contracts.queries import QUERY
from shared.embedding import load_embedder
from shared.replies import deadline_answer, error_answer
from shared.settings import EmbeddingSettings, StoreSettings
from shared.stage import Stage
from shared.store.factory import open_store
from shared.store.readiness import index_answers

settings = RetrieverSettings()
stage = Stage("retriever", settings)
embedder = load_embedder(EmbeddingSettings())
store = open_store(StoreSettings(), dim=embedder.dim)
stage.subscribe(
    stage.streams.queries,
    QUERY,
    partial(
        retrieve_after,  # read-your-writes: waits for the `after` versions, then retrieves
        retrieve=partial(
            retrieve_batch,
            embedder=embedder,
            store=store,
            settings=settings,
            streams=stage.streams,
        ),
        store=store,
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
app.after_shutdown(store.close)
