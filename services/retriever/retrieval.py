"""Queries in, fused top-k candidates out: the retriever stage's logic."""

import asyncio
import time
from collections.abc import Sequence

import structlog

from services.retriever.settings import RetrieverSettings
from shared import metrics
from shared.bounded import map_bounded
from shared.contracts import Candidate, Query, Retrieved, StageTimings
from shared.deadlines import is_past, seconds_left
from shared.embedding import Embedder, encode_async
from shared.errors import PermanentError
from shared.replies import check_reply_to, deadline_answer_now
from shared.settings import StreamSettings
from shared.stage import Outcome, Publication
from shared.store.base import Store
from shared.store.records import Hit, SearchRequest, Vector, check_filters

log = structlog.get_logger("ragstream.retriever")
STAGE = "retriever"


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


def check_query(query: Query, streams: StreamSettings) -> None:
    """Refuse, before any work, a query no retry can serve: a `reply_to` outside the answers
    streams, a filter on a key the stores cannot filter on (`PermanentError`: dead-lettered at
    once, and its client gets an error Answer)."""
    check_reply_to(query, streams)
    try:
        check_filters(query.filters or {})
    except ValueError as exc:
        raise PermanentError(str(exc)) from None


async def retrieve_batch(
    queries: Sequence[Query],
    embedder: Embedder,
    store: Store,
    settings: RetrieverSettings,
    streams: StreamSettings,
) -> list[Outcome]:
    """Embed the batch's valid queries at once, then search the index for each, up to
    `settings.concurrency` searches at a time. Invalid queries are refused up front; a query
    past its deadline gets an error Answer instead of a search (also one whose search outlives
    its deadline: the search is abandoned then)."""
    outcomes: list[Outcome | None] = [None] * len(queries)
    for index, query in enumerate(queries):
        try:
            check_query(query, streams)
        except PermanentError as exc:
            outcomes[index] = exc
            continue
        if is_past(query.deadline):
            outcomes[index] = await deadline_answer_now(query, query, streams, STAGE)
    todo = [i for i, outcome in enumerate(outcomes) if outcome is None]
    started = time.perf_counter()
    vectors = (
        await encode_async(embedder, [queries[i].text for i in todo])
        if todo and settings.mode != "bm25"
        else None
    )
    embed_ms = (time.perf_counter() - started) * 1000 / max(1, len(todo))

    async def search(position: int) -> Outcome:
        query = queries[todo[position]]
        vector = vectors[position] if vectors is not None else None
        return await retrieve_one(
            query, vector, embed_ms, store, settings=settings, streams=streams
        )

    for index, outcome in zip(
        todo, await map_bounded(search, range(len(todo)), settings.concurrency), strict=True
    ):
        outcomes[index] = outcome
    return [outcome for outcome in outcomes if outcome is not None]


async def retrieve_one(
    query: Query,
    vector: Vector | None,
    embed_ms: float,
    store: Store,
    *,
    settings: RetrieverSettings,
    streams: StreamSettings,
) -> Outcome:
    """Search the index for one (valid) query, within its deadline."""
    if is_past(query.deadline):  # it may have waited for its turn
        return await deadline_answer_now(query, query, streams, STAGE)
    started = time.perf_counter()
    limit = seconds_left(query.deadline) if query.deadline is not None else None
    try:
        async with asyncio.timeout(limit) as scope:
            hits = await store.hybrid_search(search_request(query, vector, settings))
    except TimeoutError:
        if not scope.expired():
            raise
        log.info("search abandoned at the deadline", query_id=query.query_id)
        return await deadline_answer_now(query, query, streams, STAGE)
    search_ms = (time.perf_counter() - started) * 1000
    retrieve_ms = embed_ms + search_ms
    log.info(
        "retrieved", query_id=query.query_id, hits=len(hits), ms=round(retrieve_ms, 1),
        embed_ms=round(embed_ms, 1), search_ms=round(search_ms, 1),
    )  # fmt: skip
    if is_past(query.deadline):
        return await deadline_answer_now(query, query, streams, STAGE)
    retrieved = Retrieved(
        query=query,
        candidates=tuple(candidate_of(h) for h in hits),
        timings=StageTimings(retrieve_ms=retrieve_ms),
    )
    metrics.observe_since(metrics.query_latency_seconds, "retriever", query.emitted_at)
    return [Publication(streams.retrieved, retrieved)]
