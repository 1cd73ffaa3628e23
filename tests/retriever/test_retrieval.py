"""The retriever stage in-process, on a real Redis and a real LanceDB index (BM25 mode, so no
model is loaded): searches of a batch run concurrently within the bound, a query with an
unknown filter key is refused on its first delivery, and deadlines cut the work short."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from services.retriever.retrieval import retrieve_batch
from services.retriever.settings import RetrieverSettings
from shared import wire
from shared.contracts import Answer, DeadLetter, Query, Retrieved
from shared.contracts.queries import QUERY
from shared.deadlines import deadline_after
from shared.replies import deadline_answer, error_answer
from shared.settings import RedisSettings, StreamSettings
from shared.stage import Entry, Stage
from shared.stage_settings import StageSettings
from shared.store.lancedb_store import LanceDBStore
from shared.store.records import Hit, SearchRequest
from tests.store.builders import DIM, upsert


class NoEmbedder:
    """BM25 mode embeds nothing: any call is a bug."""

    dim = DIM
    name = "none"

    def encode(self, texts: Sequence[str]) -> object:
        raise AssertionError("bm25 mode must not embed")


class SlowStore:
    """The real store, each search held `delay_s` longer; counts searches in flight."""

    def __init__(self, store: LanceDBStore, delay_s: float) -> None:
        self.store = store
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.searched: list[str] = []

    async def hybrid_search(self, request: SearchRequest) -> list[Hit]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            hits = await self.store.hybrid_search(request)
            self.searched.append(request.text)
            return hits
        finally:
            self.in_flight -= 1


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[LanceDBStore]:
    store = LanceDBStore(tmp_path / "index", DIM)
    await store.apply(
        [
            upsert(
                "mars",
                1,
                ["Mars has two moons, Phobos and Deimos."],
                source="wiki",
                tags=("lang=en",),
            ),
            upsert(
                "titan",
                1,
                ["Titan is the largest moon of Saturn."],
                source="wiki",
                tags=("lang=en",),
            ),
        ]
    )
    yield store
    await store.close()


@pytest.fixture
async def stage(redis_server: RedisServer, streams: StreamSettings) -> AsyncIterator[Stage]:
    settings = StageSettings(consumer="c1", reclaim_idle_ms=0, max_deliveries=5, batch_size=32)
    redis_settings = RedisSettings.model_validate({"RAG_REDIS_URL": redis_server.url})
    stage = Stage("retriever", settings, redis_settings, streams)
    yield stage
    await stage.redis.aclose()


async def start(stage: Stage, store: SlowStore, streams: StreamSettings, concurrency: int) -> None:
    settings = RetrieverSettings(mode="bm25", concurrency=concurrency)
    stage.subscribe(
        streams.queries,
        QUERY,
        partial(
            retrieve_batch, embedder=NoEmbedder(), store=store, settings=settings, streams=streams
        ),
        on_reject=lambda entry, reason: error_answer(entry, reason, streams),
        deadline_of=lambda query: query.deadline,
        on_expired=lambda query: deadline_answer(query, streams, "retriever"),
    )
    await stage.start()


async def ask_batch(redis: Redis, stage: Stage, streams: StreamSettings, *queries: Query) -> None:
    """Publish the queries, read them as one batch and process it."""
    for query in queries:
        await redis.xadd(streams.queries, wire.encode(query))
    response = await redis.xreadgroup(stage.group, "c1", {streams.queries: ">"}, count=100)
    entries = [Entry(i, f) for _, found in response for i, f in found]
    assert len(entries) == len(queries)
    await stage.subscriptions[0].process(entries)


async def retrieved(redis: Redis, streams: StreamSettings) -> dict[str, Retrieved]:
    events = [Retrieved.model_validate_json(f[b"event"]) for _, f in await redis.xrange(
        streams.retrieved)]  # fmt: skip
    return {e.query.query_id: e for e in events}


async def answers(redis: Redis, streams: StreamSettings) -> dict[str, Answer]:
    found = [
        Answer.model_validate_json(f[b"event"]) for _, f in await redis.xrange(streams.answers)
    ]
    return {a.query_id: a for a in found}


@pytest.mark.parametrize("concurrency", [1, 4])
async def test_searches_of_a_batch_run_concurrently_within_the_bound(
    concurrency: int, stage: Stage, redis: Redis, streams: StreamSettings, index: LanceDBStore
) -> None:
    store = SlowStore(index, delay_s=0.2)
    await start(stage, store, streams, concurrency)
    queries = [Query(query_id=f"q{i}", text="moons of Mars") for i in range(8)]

    await ask_batch(redis, stage, streams, *queries)

    assert store.max_in_flight == concurrency
    got = await retrieved(redis, streams)
    assert set(got) == {q.query_id for q in queries}
    assert all(r.candidates[0].doc_id == "mars" for r in got.values())
    assert (await redis.xpending(streams.queries, stage.group))["pending"] == 0


async def test_unknown_filter_key_is_refused_on_first_delivery(
    stage: Stage, redis: Redis, streams: StreamSettings, index: LanceDBStore
) -> None:
    store = SlowStore(index, delay_s=0)
    await start(stage, store, streams, concurrency=4)
    bad = Query(query_id="bad", text="moons", filters={"lang": "en"})
    good = Query(query_id="good", text="largest moon", filters={"metadata.lang": "en"})

    await ask_batch(redis, stage, streams, bad, good)

    assert store.searched == ["largest moon"]  # the bad one never reached the index
    [letter] = [
        DeadLetter.model_validate_json(f[b"event"]) for _, f in await redis.xrange(streams.dlq)
    ]
    assert (letter.query_id, letter.deliveries, letter.stage) == ("bad", 1, "retriever")
    assert "cannot filter on ['lang']" in letter.reason
    got = await answers(redis, streams)
    assert list(got) == ["bad"]
    assert got["bad"].error == letter.reason
    assert (await retrieved(redis, streams))["good"].candidates[0].doc_id == "titan"
    assert (await redis.xpending(streams.queries, stage.group))["pending"] == 0


async def test_queries_whose_deadline_passes_while_waiting_are_not_searched(
    stage: Stage, redis: Redis, streams: StreamSettings, index: LanceDBStore
) -> None:
    """One search at a time, each 0.3 s: of six queries due in 0.75 s, the first ones are
    served and the rest get the deadline error without reaching the index."""
    store = SlowStore(index, delay_s=0.3)
    await start(stage, store, streams, concurrency=1)
    queries = [
        Query(query_id=f"q{i}", text="moons of Mars", deadline=deadline_after(0.75))
        for i in range(6)
    ]

    await ask_batch(redis, stage, streams, *queries)

    served, refused = await retrieved(redis, streams), await answers(redis, streams)
    assert set(served) | set(refused) == {q.query_id for q in queries}
    assert served and refused
    assert len(store.searched) < len(queries)
    assert all((a.error or "").startswith("deadline exceeded at the retriever") for a in
               refused.values())  # fmt: skip


async def test_a_search_running_past_the_deadline_is_abandoned(
    stage: Stage, redis: Redis, streams: StreamSettings, index: LanceDBStore
) -> None:
    store = SlowStore(index, delay_s=30)
    await start(stage, store, streams, concurrency=4)
    query = Query(query_id="slow", text="moons", deadline=deadline_after(0.3))

    await asyncio.wait_for(ask_batch(redis, stage, streams, query), 10)

    assert store.searched == []
    error = (await answers(redis, streams))["slow"].error or ""
    assert error.startswith("deadline exceeded at the retriever")
    assert await retrieved(redis, streams) == {}
