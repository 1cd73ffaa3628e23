"""Retrieved candidates in, the top-n in reranked order out, per query."""

from collections.abc import Sequence

import structlog

from services.reranker.reranking import Reranker, rerank
from services.reranker.settings import RerankerSettings
from shared import metrics
from shared.bounded import map_bounded
from shared.contracts import Reranked, Retrieved
from shared.deadlines import is_past
from shared.replies import deadline_answer_now
from shared.settings import StreamSettings
from shared.stage import Outcome, Publication

log = structlog.get_logger("ragstream.reranker")
STAGE = "reranker"


async def rerank_batch(
    events: Sequence[Retrieved],
    reranker: Reranker | None,
    settings: RerankerSettings,
    out_stream: str,
    streams: StreamSettings | None = None,
) -> list[Outcome]:
    """Rerank the batch's queries, up to `settings.concurrency` at a time (a local model still
    scores one at a time, see `services.reranker.worker`). A query past its deadline gets an
    error Answer on its reply stream (`streams`) instead."""
    replies = streams or StreamSettings()

    async def one(retrieved: Retrieved) -> Outcome:
        return await rerank_one(retrieved, reranker, settings, out_stream, replies)

    return await map_bounded(one, events, settings.concurrency)


async def rerank_one(
    retrieved: Retrieved,
    reranker: Reranker | None,
    settings: RerankerSettings,
    out_stream: str,
    streams: StreamSettings,
) -> Outcome:
    query = retrieved.query
    if is_past(query.deadline):  # it may have waited for its turn
        return await deadline_answer_now(retrieved, query, streams, STAGE)
    result = await rerank(
        query,
        retrieved.candidates,
        reranker,
        top_n=query.top_n,
        budget_ms=settings.budget_ms,
        max_passage_chars=settings.max_passage_chars,
        fused_weight=settings.fused_weight,
        depth=settings.depth,
    )
    log.info(
        "reranked",
        query_id=query.query_id,
        reranker=result.reranker,
        degraded=result.degraded,
        ms=round(result.rerank_ms, 1),
    )
    if is_past(query.deadline):  # the rerank stopped at the deadline, or finished too late
        return await deadline_answer_now(retrieved, query, streams, STAGE)
    reranked = Reranked(
        query=query,
        candidates=tuple(result.candidates),
        reranker=result.reranker,
        rerank_degraded=result.degraded,
        timings=retrieved.timings.model_copy(update={"rerank_ms": result.rerank_ms}),
        possibly_stale=retrieved.possibly_stale,
    )
    metrics.observe_since(metrics.query_latency_seconds, "reranker", query.emitted_at)
    return [Publication(out_stream, reranked)]
