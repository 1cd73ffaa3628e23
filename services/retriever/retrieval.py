"""Queries in, fused top-k candidates out: the retriever stage's logic."""

import time
from collections.abc import Sequence

import structlog

from services.retriever.settings import RetrieverSettings
from shared import metrics
from shared.contracts import Candidate, Query, Retrieved, StageTimings
from shared.embedding import Embedder, encode_async
from shared.errors import PermanentError
from shared.replies import check_reply_to
from shared.settings import StreamSettings
from shared.stage import Outcome, Publication
from shared.store.base import Store
from shared.store.records import Hit, SearchRequest, Vector

log = structlog.get_logger("ragstream.retriever")


def search_request(
    query: Query, vector: Vector | None, settings: RetrieverSettings
) -> SearchRequest:
    return SearchRequest(
        text=query.text,
        vector=vector,
        k=query.top_k_retrieve,
        mode=settings.mode,
        fusion=settings.fusion,
        alpha=settings.alpha,
        candidates=max(settings.candidates, query.top_k_retrieve),
        filters=query.filters or {},
    )


def candidate_of(hit: Hit) -> Candidate:
    chunk = hit.chunk
    return Candidate(
        chunk_id=chunk.chunk_id,
        doc_id=chunk.doc_id,
        version=chunk.version,
        title=chunk.title,
        text=chunk.text,
        section_path=chunk.section_path,
        char_start=chunk.char_start,
        char_end=chunk.char_end,
        dense_score=hit.dense_score,
        bm25_score=hit.bm25_score,
        fused_score=hit.score,
    )


async def retrieve_batch(
    queries: Sequence[Query],
    embedder: Embedder,
    store: Store,
    settings: RetrieverSettings,
    streams: StreamSettings,
) -> list[Outcome]:
    """Embed every query of the batch at once, then search the index for each."""
    started = time.perf_counter()
    vectors = (
        await encode_async(embedder, [q.text for q in queries]) if settings.mode != "bm25" else None
    )
    embed_ms = (time.perf_counter() - started) * 1000 / max(1, len(queries))
    outcomes: list[Outcome] = []
    for index, query in enumerate(queries):
        try:
            check_reply_to(query, streams)
        except PermanentError as exc:
            outcomes.append(exc)
            continue
        search_started = time.perf_counter()
        vector = vectors[index] if vectors is not None else None
        hits = await store.hybrid_search(search_request(query, vector, settings))
        retrieve_ms = embed_ms + (time.perf_counter() - search_started) * 1000
        log.info("retrieved", query_id=query.query_id, hits=len(hits), ms=round(retrieve_ms, 1))
        retrieved = Retrieved(
            query=query,
            candidates=tuple(candidate_of(h) for h in hits),
            timings=StageTimings(retrieve_ms=retrieve_ms),
        )
        metrics.observe_since(metrics.query_latency_seconds, "retriever", query.emitted_at)
        outcomes.append([Publication(streams.retrieved, retrieved)])
    return outcomes
