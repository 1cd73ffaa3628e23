"""Reranker stage: `rag.retrieved` → `rag.reranked`.

Run: `ragstream run reranker` or `faststream run services.reranker.app:app`.
"""

from functools import partial

from services.reranker.events import rerank_batch
from services.reranker.factory import build_reranker
from services.reranker.settings import RerankerSettings
from shared.contracts import Answer
from shared.contracts.queries import RETRIEVED, Reranked
from shared.replies import deadline_answer
from shared.stage import Stage

settings = RerankerSettings()
stage = Stage("reranker", settings)
reranker = build_reranker(settings)
stage.subscribe(
    stage.streams.retrieved,
    RETRIEVED,
    partial(
        rerank_batch,
        reranker=reranker,
        settings=settings,
        out_stream=stage.streams.reranked,
        streams=stage.streams,
    ),
    deadline_of=lambda retrieved: retrieved.query.deadline,
    on_expired=lambda retrieved: deadline_answer(retrieved.query, stage.streams, "reranker"),
)
stage.publishes(
    stage.streams.reranked, Reranked, "Each query with its top-n candidates in final order."
)
stage.publishes(
    stage.streams.answers,
    Answer,
    "Error answers (`error` set) to queries past their `deadline`, on the query's `reply_to`.",
)
app = stage.app()
if reranker is not None:
    app.after_shutdown(reranker.aclose)
