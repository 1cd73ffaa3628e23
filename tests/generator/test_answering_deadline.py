"""The generator checks a query's deadline before answering it (a batch's later queries may
wait for their turn past it)."""

from collections.abc import Sequence

from services.generator.answering import answer_batch
from services.generator.settings import GeneratorSettings
from shared.contracts import Answer, Reranked
from shared.contracts.queries import Candidate, Query, StageTimings
from shared.deadlines import deadline_after
from shared.stage import Publication
from tests.conftest import unique_streams

TEXT = "Titan is the largest moon of Saturn. It has a dense atmosphere of nitrogen."


def reranked(query: Query) -> Reranked:
    candidate = Candidate(
        chunk_id="c0", doc_id="saturn", version=1, title="Saturn", text=TEXT,
        char_start=0, char_end=len(TEXT), fused_score=1.0, dense_score=0.9,
    )  # fmt: skip
    return Reranked(query=query, candidates=(candidate,), reranker="none", timings=StageTimings())


async def test_query_past_its_deadline_gets_the_deadline_error_without_generation() -> None:
    streams = unique_streams()
    deltas: list[Publication] = []

    async def publish(publications: Sequence[Publication]) -> None:
        deltas.extend(publications)

    late = Query(query_id="late", text="What is Titan?", deadline=deadline_after(-1), stream=True)
    live = Query(query_id="live", text="What is Titan?", deadline=deadline_after(60))
    outcomes = await answer_batch(
        [reranked(late), reranked(live)],
        GeneratorSettings(concurrency=2), chat=None, streams=streams, publish=publish,
    )  # fmt: skip

    answers = []
    for outcome in outcomes:
        assert isinstance(outcome, list)
        [publication] = outcome
        assert publication.stream == streams.answers
        assert isinstance(publication.event, Answer)
        answers.append(publication.event)
    late_answer, live_answer = answers
    assert (late_answer.error or "").startswith("deadline exceeded at the generator")
    assert late_answer.text == "" and not late_answer.citations
    assert live_answer.error is None and "Titan" in live_answer.text
    assert all(getattr(p.event, "query_id", None) != "late" for p in deltas)  # no deltas either
