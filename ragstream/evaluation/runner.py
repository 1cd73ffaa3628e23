"""Run a dataset's queries through the retriever's and the reranker's logic over an index.

Each query is embedded (unless BM25 only), turned into a `SearchRequest` by the retriever's
`search_request`, answered by `store.hybrid_search`, and, in rerank modes, its top candidates
are reordered by the reranker's `rerank`. Chunks become doc rankings by their best chunk.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from services.reranker.factory import build_reranker
from services.reranker.reranking import rerank
from services.reranker.settings import RerankerSettings
from services.retriever.retrieval import candidate_of, search_request
from services.retriever.settings import RetrieverSettings
from shared.contracts import Candidate, Query
from shared.embedding import Embedder, encode_async
from shared.store.base import Store
from shared.store.records import FusionMethod

Mode = Literal["bm25", "dense", "hybrid", "hybrid+rerank", "default"]
MODES: tuple[str, ...] = get_args(Mode)
MAX_TOP_K_RETRIEVE = 200  # `Query.top_k_retrieve`'s limit


@dataclass(frozen=True, slots=True)
class ModeConfig:
    retriever: RetrieverSettings
    reranker: RerankerSettings


def mode_config(
    mode: Mode,
    *,
    reranker_model: str | None = None,
    fusion: FusionMethod | None = None,
    alpha: float | None = None,
    candidates: int | None = None,
) -> ModeConfig:
    """The production settings (`RetrieverSettings()`, `RerankerSettings()`, env included),
    with the search mode and reranker backend `mode` names, and any explicit overrides."""
    retriever = RetrieverSettings()
    reranker = RerankerSettings()
    if mode != "default":
        search = {"bm25": "bm25", "dense": "dense"}.get(mode, "hybrid")
        retriever = retriever.model_copy(update={"mode": search})
        if mode == "hybrid+rerank":
            model = reranker_model or reranker.model
            if not model:
                raise ValueError(
                    "mode hybrid+rerank needs a cross-encoder: --reranker-model PATH or "
                    "RAG_RERANKER_MODEL (train one with `ragstream train-reranker`)"
                )
            reranker = reranker.model_copy(update={"backend": "cross-encoder", "model": model})
        else:
            reranker = reranker.model_copy(update={"backend": "none"})
    elif reranker_model:
        reranker = reranker.model_copy(update={"model": reranker_model})
    overrides = {"fusion": fusion, "alpha": alpha, "candidates": candidates}
    retriever = retriever.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    return ModeConfig(retriever, reranker)


async def retrieve(
    query: Query,
    store: Store,
    embedder: Embedder | None,
    retriever: RetrieverSettings,
    depth: int,
) -> list[Candidate]:
    """The retriever's answer to `query` (embed, `search_request`, search), `depth` chunks deep.

    Past the contract's limit of `top_k_retrieve` (200), the request is widened as
    `search_request` would: k and candidates at least `depth`.
    """
    vector = None
    if retriever.mode != "bm25":
        if embedder is None:
            raise ValueError(f"mode {retriever.mode} needs an embedder")
        vector = (await encode_async(embedder, [query.text]))[0]
    request = search_request(query, vector, retriever)
    if depth > request.k:
        request = replace(request, k=depth, candidates=max(request.candidates, depth))
    return [candidate_of(h) for h in await store.hybrid_search(request)]


@dataclass
class QueryRun:
    chunk_rankings: dict[str, list[str]] = field(default_factory=dict)
    """Query id -> the doc id of each chunk hit, best first."""
    query_ms: list[float] = field(default_factory=list)
    rerank_ms: list[float] = field(default_factory=list)
    degraded: int = 0


async def run_queries(
    queries: dict[str, str],
    store: Store,
    embedder: Embedder | None,
    config: ModeConfig,
    *,
    depth: int,
    budget_ms: float | None = None,
    on_progress: Callable[[], None] | None = None,
) -> QueryRun:
    """Every query through embed -> search -> (rerank), timed end to end, one at a time.

    `depth` chunks are asked for (a query with `top_k_retrieve=depth`). `budget_ms=None` lets
    every rerank finish (quality is measured, not the budget; rerank latency is reported).
    """
    retriever = config.retriever
    reranker = build_reranker(config.reranker)
    result = QueryRun()
    try:
        for qid, text in queries.items():
            query = Query(query_id=qid, text=text, top_k_retrieve=min(depth, MAX_TOP_K_RETRIEVE))
            started = time.perf_counter()
            candidates = await retrieve(query, store, embedder, retriever, depth)
            if reranker is not None:
                outcome = await rerank(
                    query, candidates, reranker, top_n=len(candidates),
                    budget_ms=budget_ms, max_passage_chars=config.reranker.max_passage_chars,
                    fused_weight=config.reranker.fused_weight, depth=config.reranker.depth,
                )  # fmt: skip
                candidates = list(outcome.candidates)
                result.rerank_ms.append(outcome.rerank_ms)
                result.degraded += outcome.degraded is not None
            result.query_ms.append((time.perf_counter() - started) * 1000)
            result.chunk_rankings[qid] = [c.doc_id for c in candidates]
            if on_progress is not None:
                on_progress()
    finally:
        if reranker is not None:
            await reranker.aclose()
    return result
