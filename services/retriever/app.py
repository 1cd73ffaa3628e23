"""Retriever stage: `rag.queries` → `rag.retrieved`.

Run: `ragstream run retriever` or `faststream run services.retriever.app:app`.
"""

from functools import partial

from services.retriever.retrieval import retrieve_batch
from services.retriever.settings import RetrieverSettings
from shared.contracts import Answer, Retrieved
from shared.contracts.queries import QUERY
from shared.embedding import SentenceTransformerEmbedder
from shared.replies import error_answer
from shared.settings import EmbeddingSettings, StoreSettings
from shared.stage import Stage
from shared.store.factory import open_store
from shared.store.readiness import index_answers

settings = RetrieverSettings()
stage = Stage("retriever", settings)
embedder = SentenceTransformerEmbedder(EmbeddingSettings())
store = open_store(StoreSettings(), dim=embedder.dim)
stage.subscribe(
    stage.streams.queries,
    QUERY,
    partial(
        retrieve_batch,
        embedder=embedder,
        store=store,
        settings=settings,
        streams=stage.streams,
    ),
    on_reject=lambda entry, reason: error_answer(entry, reason, stage.streams),
)
stage.publishes(stage.streams.retrieved, Retrieved, "Each query with its fused top-k candidates.")
stage.publishes(
    stage.streams.answers,
    Answer,
    "Error answers (`error` set) to rejected queries, on the query's `reply_to` if it is "
    "`rag.answers` or under it, else on `rag.answers`.",
)
stage.check_ready(index_answers(store))
app = stage.app()
app.after_shutdown(store.close)
