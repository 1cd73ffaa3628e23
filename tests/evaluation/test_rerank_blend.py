"""The reranker's blend of its own scores with the retriever's fused scores."""

from collections.abc import Sequence

import pytest

from services.reranker.reranking import blended, rerank
from shared.contracts.queries import Candidate, Query


def candidate(chunk_id: str, fused: float) -> Candidate:
    return Candidate(
        chunk_id=chunk_id, doc_id=chunk_id, version=1, title="", text=chunk_id,
        char_start=0, char_end=1, fused_score=fused,
    )  # fmt: skip


class Fixed:
    name = "fixed"

    def __init__(self, scores: dict[str, float]) -> None:
        self.scores = scores

    async def score(self, query: str, passages: Sequence[str]) -> list[float]:
        return [self.scores[p] for p in passages]

    async def aclose(self) -> None:
        return None


CANDIDATES = [candidate("a", 0.9), candidate("b", 0.5), candidate("c", 0.1)]
RERANKER = Fixed({"a": 0.0, "b": 1.0, "c": 0.5})  # prefers b, then c, then a
QUERY = Query(query_id="q", text="q")


def test_blend_is_a_weighted_sum_of_standardised_scores() -> None:
    keys = blended(CANDIDATES, [0.0, 1.0, 0.5], 0.5)
    # fused 0.9/0.5/0.1 -> z 1.2247/0/-1.2247; reranker 0/1/0.5 -> z -1.2247/1.2247/0
    assert keys == pytest.approx([0.0, 0.61237, -0.61237], abs=1e-4)


@pytest.mark.parametrize(
    ("weight", "order"), [(0.0, ["b", "c", "a"]), (0.5, ["b", "a", "c"]), (1.0, ["a", "b", "c"])]
)
async def test_fused_weight_moves_the_order_between_reranker_and_retriever(
    weight: float, order: list[str]
) -> None:
    result = await rerank(QUERY, CANDIDATES, RERANKER, top_n=3, budget_ms=None, fused_weight=weight)
    assert [c.chunk_id for c in result.candidates] == order
    # rerank_score stays the reranker's own score, whatever the blend
    assert {c.chunk_id: c.rerank_score for c in result.candidates} == RERANKER.scores
