"""Tests of the generator's logic; `candidate` and `reranked` build its inputs."""

from shared.contracts.queries import Candidate, Query, Reranked, StageTimings


def candidate(
    text: str,
    n: int = 1,
    *,
    title: str = "",
    dense: float | None = 0.8,
    rerank: float | None = None,
) -> Candidate:
    return Candidate(
        chunk_id=f"doc{n}#0",
        doc_id=f"doc{n}",
        version=1,
        title=title or f"Doc {n}",
        text=text,
        char_start=100 * n,
        char_end=100 * n + len(text),
        dense_score=dense,
        fused_score=1.0 / n,
        rerank_score=rerank,
    )


def reranked(
    question: str,
    candidates: list[Candidate] | tuple[Candidate, ...],
    *,
    stream: bool = False,
    degraded: str | None = None,
) -> Reranked:
    return Reranked(
        query=Query(query_id="q1", text=question, stream=stream),
        candidates=tuple(candidates),
        reranker="cross-encoder/test",
        rerank_degraded=degraded,
        timings=StageTimings(retrieve_ms=12.5, rerank_ms=30.0),
    )


EIFFEL = [
    "Paris is the capital of France. It is known for its cafés and museums.",
    "The Eiffel Tower was completed in 1889 for the World's Fair. "
    "The Eiffel Tower is 330 metres tall. It was designed by Gustave Eiffel's company.",
    "The Louvre is the world's most-visited museum. It holds the Mona Lisa.",
]


def eiffel_candidates(*, dense: float | None = 0.8, rerank: float | None = None) -> list[Candidate]:
    return [
        candidate(text, n, dense=dense, rerank=rerank) for n, text in enumerate(EIFFEL, start=1)
    ]
