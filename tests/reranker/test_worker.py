"""Abandoned scoring frees the worker: a call given up (budget, deadline) stops after the chunk
in progress, and one given up before its turn never runs. Checked by what the worker ran (its
chunk counters), not by timing: with a blocking scorer and with the real cross-encoder."""

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.reranker.cross_encoder import CrossEncoderReranker
from services.reranker.reranking import rerank
from services.reranker.worker import ScoringWorker
from shared.contracts.queries import Candidate, Query
from shared.deadlines import deadline_after


class BlockingScorer:
    """Sleeps `chunk_s` per call (like a model busy on both cores); records what it scored."""

    def __init__(self, chunk_s: float) -> None:
        self.chunk_s = chunk_s
        self.scored: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    def __call__(self, query: str, passages: Sequence[str]) -> list[float]:
        time.sleep(self.chunk_s)
        with self.lock:
            self.scored.append((query, len(passages)))
        return [float(len(p)) for p in passages]

    def chunks_of(self, query: str) -> int:
        with self.lock:
            return sum(1 for q, _ in self.scored if q == query)


async def test_a_timed_out_call_stops_scoring_and_the_next_one_runs_at_once() -> None:
    scorer = BlockingScorer(chunk_s=0.05)
    worker = ScoringWorker(scorer, chunk_size=4)
    try:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.12):
                await worker.score("abandoned", ["x"] * 400)  # 100 chunks, ~5 s of work
        follow_up = await worker.score("next", ["a", "bb", "ccc", "dddd", "eeeee"])
    finally:
        worker.close()

    assert follow_up == [1.0, 2.0, 3.0, 4.0, 5.0]
    abandoned = scorer.chunks_of("abandoned")
    assert 1 <= abandoned < 100  # the chunks until the timeout, plus the one in progress
    # Nothing of the abandoned call ran after it was given up: only the follow-up's 2 chunks.
    assert worker.stats.chunks_run == abandoned + 2
    assert worker.stats.jobs_abandoned == 1 and worker.stats.jobs_done == 1


async def test_calls_given_up_before_their_turn_are_skipped() -> None:
    scorer = BlockingScorer(chunk_s=0.1)
    worker = ScoringWorker(scorer, chunk_size=8)
    try:
        first = asyncio.create_task(worker.score("first", ["p"] * 16))  # 2 chunks, ~0.2 s
        await asyncio.sleep(0.02)
        queued = [asyncio.create_task(worker.score(f"queued{i}", ["p"] * 8)) for i in range(3)]
        await asyncio.sleep(0.02)
        for task in queued:
            task.cancel()
        assert await first == [1.0] * 16
        last = await worker.score("last", ["p"])
    finally:
        worker.close()

    assert last == [1.0]
    assert [q for q, _ in scorer.scored] == ["first", "first", "last"]
    assert worker.stats.jobs_skipped == 3


async def test_errors_reach_the_caller_and_close_fails_queued_calls() -> None:
    def broken(query: str, passages: Sequence[str]) -> list[float]:
        raise ValueError("tokenizer exploded")

    worker = ScoringWorker(broken, chunk_size=2)
    with pytest.raises(ValueError, match="tokenizer exploded"):
        await worker.score("q", ["a", "b", "c"])
    worker.close()
    with pytest.raises(RuntimeError, match="closed"):
        await worker.score("q", ["a"])


def candidate(i: int, text: str) -> Candidate:
    return Candidate(
        chunk_id=f"c{i}", doc_id=f"d{i}", version=1, title="", text=text,
        char_start=0, char_end=len(text), fused_score=1.0 - i / 1000,
    )  # fmt: skip


@pytest.mark.slow
async def test_cross_encoder_past_its_budget_frees_the_model_for_the_next_query(
    cross_encoder_path: Path,
) -> None:
    reranker = CrossEncoderReranker.load(str(cross_encoder_path), chunk_size=4)
    long_text = "Redis streams keep entries until they are acknowledged by a consumer group. " * 4
    pool = [candidate(i, long_text) for i in range(400)]  # 100 chunks: seconds of scoring
    try:
        late = await rerank(
            Query(query_id="late", text="how do consumer groups work"), pool, reranker,
            top_n=5, budget_ms=50,
        )  # fmt: skip
        abandoned = reranker.worker.stats.chunks_run
        follow_up = await rerank(
            Query(query_id="next", text="how do consumer groups work"), pool[:8], reranker,
            top_n=5, budget_ms=60_000,
        )  # fmt: skip
    finally:
        await reranker.aclose()

    assert late.degraded == "rerank timed out after 50 ms"
    assert follow_up.degraded is None
    assert abandoned < 100  # most of the late call's chunks never ran...
    # ...and none after it was given up: the follow-up's 2 chunks ran next, at most one chunk
    # of the late call (in progress when it timed out) in between.
    assert reranker.worker.stats.chunks_run - abandoned in (2, 3)
    assert reranker.worker.stats.jobs_abandoned == 1


@pytest.mark.slow
async def test_cross_encoder_stops_at_the_querys_deadline(cross_encoder_path: Path) -> None:
    reranker = CrossEncoderReranker.load(str(cross_encoder_path), chunk_size=4)
    pool = [candidate(i, "Espresso is brewed under pressure. " * 8) for i in range(400)]
    query = Query(query_id="due", text="espresso", deadline=deadline_after(0.2))
    try:
        outcome = await rerank(query, pool, reranker, top_n=3, budget_ms=60_000)
    finally:
        await reranker.aclose()

    assert (outcome.degraded or "").startswith("rerank stopped at the query's deadline")
    assert [c.chunk_id for c in outcome.candidates] == ["c0", "c1", "c2"]  # fused order
    assert reranker.worker.stats.chunks_run < 100
