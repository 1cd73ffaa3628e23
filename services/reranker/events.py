"""Retrieved candidates in, the top-n in reranked order out, per query."""

from collections.abc import Sequence

import structlog

from services.reranker.reranking import Reranker, rerank
from services.reranker.settings import RerankerSettings
from shared import metrics
from shared.contracts import Reranked, Retrieved
from shared.stage import Outcome, Publication

log = structlog.get_logger("ragstream.reranker")


async def rerank_batch(
    events: Sequence[Retrieved],
    reranker: Reranker | None,
    settings: RerankerSettings,
    out_stream: str,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for retrieved in events:
        query = retrieved.query
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
        reranked = Reranked(
            query=query,
            candidates=tuple(result.candidates),
            reranker=result.reranker,
            rerank_degraded=result.degraded,
            timings=retrieved.timings.model_copy(update={"rerank_ms": result.rerank_ms}),
        )
        metrics.observe_since(metrics.query_latency_seconds, "reranker", query.emitted_at)
        outcomes.append([Publication(out_stream, reranked)])
    return outcomes
