"""The reranker stage's handler: a batch's queries reranked concurrently within the bound, and
queries past their deadline answered with an error instead of being reranked."""

import asyncio
from collections.abc import Sequence

import pytest

from services.reranker.events import rerank_batch
from services.reranker.settings import RerankerSettings
from shared.contracts import Answer, Reranked, Retrieved
from shared.contracts.queries import Candidate, Query, StageTimings
from shared.deadlines import deadline_after
from shared.settings import StreamSettings
from shared.stage import Publication
from tests.conftest import unique_streams


class SlowReranker:
    """Scores by passage length after `delay_s`; counts calls in flight."""

    name = "slow"

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.queries: list[str] = []

    async def score(self, query: str, passages: Sequence[str]) -> list[float]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.queries.append(query)
        try:
            await asyncio.sleep(self.delay_s)
            return [float(len(p)) for p in passages]
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        return None


def retrieved(query: Query) -> Retrieved:
    texts = ["short", "a longer passage", "mid size"]
    candidates = tuple(
        Candidate(
            chunk_id=f"c{i}",
            doc_id=f"d{i}",
            version=1,
            title="",
            text=t,
            char_start=0,
            char_end=len(t),
            fused_score=1.0 - i / 10,
        )
        for i, t in enumerate(texts)
    )
    return Retrieved(query=query, candidates=candidates, timings=StageTimings(retrieve_ms=1.0))


def published(outcome: object) -> Reranked | Answer:
    assert isinstance(outcome, list)
    [publication] = outcome
    assert isinstance(publication, Publication)
    assert isinstance(publication.event, Reranked | Answer)
    return publication.event


@pytest.fixture
def streams() -> StreamSettings:
    return unique_streams()


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_batch_is_reranked_concurrently_within_the_bound(
    concurrency: int, streams: StreamSettings
) -> None:
    reranker = SlowReranker(delay_s=0.1)
    settings = RerankerSettings(concurrency=concurrency, fused_weight=0.0)
    events = [retrieved(Query(query_id=f"q{i}", text=f"q{i}")) for i in range(6)]

    outcomes = await rerank_batch(events, reranker, settings, streams.reranked, streams)

    assert reranker.max_in_flight == concurrency
    results = [published(o) for o in outcomes]
    assert [r.query.query_id for r in results if isinstance(r, Reranked)] == [
        f"q{i}" for i in range(6)
    ]  # one outcome per event, in order
    assert all(isinstance(r, Reranked) and r.candidates[0].chunk_id == "c1" for r in results)


async def test_query_past_its_deadline_is_answered_without_reranking(
    streams: StreamSettings,
) -> None:
    reranker = SlowReranker(delay_s=0.0)
    reply = f"{streams.answers}.client-1"
    late = Query(query_id="late", text="late", deadline=deadline_after(-0.5), reply_to=reply)
    live = Query(query_id="live", text="live", deadline=deadline_after(60))

    outcomes = await rerank_batch(
        [retrieved(late), retrieved(live)], reranker, RerankerSettings(), streams.reranked, streams
    )

    assert reranker.queries == ["live"]
    [late_publication] = outcomes[0]  # type: ignore[misc]
    assert late_publication.stream == reply
    answer = late_publication.event
    assert isinstance(answer, Answer) and answer.query_id == "late"
    assert (answer.error or "").startswith("deadline exceeded at the reranker")
    assert isinstance(published(outcomes[1]), Reranked)


async def test_the_budget_is_cut_to_the_deadline(streams: StreamSettings) -> None:
    """A 60 s budget, a reranker taking 30 s, a deadline in 0.2 s: the rerank is abandoned at
    the deadline and the client gets the deadline error (not a late, degraded answer)."""
    reranker = SlowReranker(delay_s=30)
    settings = RerankerSettings(budget_ms=60_000)
    query = Query(query_id="due", text="due", deadline=deadline_after(0.2))

    [outcome] = await asyncio.wait_for(
        rerank_batch([retrieved(query)], reranker, settings, streams.reranked, streams), 10
    )

    answer = published(outcome)
    assert isinstance(answer, Answer)
    assert (answer.error or "").startswith("deadline exceeded at the reranker")
