"""Query deadlines in the stage runtime, in-process against a real Redis: a query past its
deadline gets an error Answer instead of handling (new, or reclaimed after a crash), and the
transient-error retry never runs a handler past the deadline of a query it retries."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import pytest
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from shared import wire
from shared.contracts import Answer, Query
from shared.contracts.base import utcnow
from shared.contracts.queries import QUERY
from shared.deadlines import deadline_after
from shared.errors import TransientError
from shared.replies import deadline_answer, deadline_answer_now
from shared.settings import RedisSettings, StreamSettings
from shared.stage import Entry, Outcome, Publication, Stage
from shared.stage_settings import StageSettings


class Handler:
    """Echoes queries to `out`; raises TransientError while `failing` holds for a query."""

    def __init__(self, out: str, failing: set[str] | None = None, fail_times: int = 10**9) -> None:
        self.out = out
        self.failing = failing or set()
        self.fail_times = fail_times
        self.calls: list[tuple[datetime, list[str]]] = []

    async def __call__(self, queries: Sequence[Query]) -> list[Outcome]:
        self.calls.append((utcnow(), [q.query_id for q in queries]))
        if any(q.query_id in self.failing for q in queries) and len(self.calls) <= self.fail_times:
            raise TransientError("store down")
        return [[Publication(self.out, q)] for q in queries]

    def handled(self, query_id: str) -> list[datetime]:
        """When the handler was called with this query."""
        return [when for when, ids in self.calls if query_id in ids]


@pytest.fixture
async def stage(redis_server: RedisServer, streams: StreamSettings) -> AsyncIterator[Stage]:
    settings = StageSettings(
        consumer="c1", reclaim_idle_ms=0, max_deliveries=3, transient_retry_s=30, batch_size=10
    )
    redis_settings = RedisSettings.model_validate({"RAG_REDIS_URL": redis_server.url})
    stage = Stage("tester", settings, redis_settings, streams)
    yield stage
    await stage.redis.aclose()


def subscribe(stage: Stage, handler: Handler, streams: StreamSettings) -> None:
    stage.subscribe(
        streams.queries,
        QUERY,
        handler,
        deadline_of=lambda query: query.deadline,
        on_expired=lambda query: deadline_answer(query, streams, "tester"),
    )


async def read(redis: Redis, stream: str, group: str) -> list[Entry]:
    response = await redis.xreadgroup(group, "c1", {stream: ">"}, count=100)
    return [Entry(i, f) for _, entries in response for i, f in entries]


async def answers(redis: Redis, stream: str) -> dict[str, Answer]:
    found = [Answer.model_validate_json(f[b"event"]) for _, f in await redis.xrange(stream)]
    return {answer.query_id: answer for answer in found}


async def outputs(redis: Redis, stream: str) -> list[str]:
    return [Query.model_validate_json(f[b"event"]).query_id for _, f in await redis.xrange(stream)]


async def pending(redis: Redis, stage: Stage, stream: str) -> int:
    return int((await redis.xpending(stream, stage.group))["pending"])


async def test_query_past_its_deadline_gets_an_error_answer_and_no_handling(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    handler = Handler(streams.retrieved)
    subscribe(stage, handler, streams)
    await stage.start()
    late = Query(query_id="late", text="q", deadline=deadline_after(-1.0))
    live = Query(query_id="live", text="q", deadline=deadline_after(60))
    free = Query(query_id="free", text="q")  # no deadline
    for query in (late, live, free):
        await redis.xadd(streams.queries, wire.encode(query))

    await stage.subscriptions[0].process(await read(redis, streams.queries, stage.group))

    assert handler.handled("late") == []
    assert [ids for _, ids in handler.calls] == [["live", "free"]]
    assert await outputs(redis, streams.retrieved) == ["live", "free"]
    got = await answers(redis, streams.answers)
    assert set(got) == {"late"}
    assert got["late"].error is not None
    assert got["late"].error.startswith("deadline exceeded at the tester (")
    assert got["late"].abstained and got["late"].text == ""
    assert await pending(redis, stage, streams.queries) == 0
    assert await redis.xlen(streams.dlq) == 0  # not bad input: no dead letter


async def test_entry_reclaimed_after_its_deadline_gets_the_error_answer(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    handler = Handler(streams.retrieved)
    subscribe(stage, handler, streams)
    await stage.start()
    query = Query(query_id="orphan", text="q", deadline=deadline_after(0.3))
    await redis.xadd(streams.queries, wire.encode(query))
    assert len(await read(redis, streams.queries, stage.group)) == 1  # read, then "crashed"
    await asyncio.sleep(0.5)

    assert await stage.reclaim(stage.subscriptions[0]) == 1

    assert handler.calls == []
    error = (await answers(redis, streams.answers))["orphan"].error or ""
    assert error.startswith("deadline exceeded at the tester")
    assert await pending(redis, stage, streams.queries) == 0


async def test_transient_retry_stops_at_the_deadline(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    """The store stays down: without a deadline the batch would be retried for 30 s
    (`transient_retry_s`); with one, no retry starts after it and the client is told."""
    handler = Handler(streams.retrieved, failing={"doomed"})
    subscribe(stage, handler, streams)
    await stage.start()
    query = Query(query_id="doomed", text="q", deadline=deadline_after(0.6))
    assert query.deadline is not None
    await redis.xadd(streams.queries, wire.encode(query))

    await asyncio.wait_for(
        stage.subscriptions[0].process(await read(redis, streams.queries, stage.group)), 15
    )

    calls = handler.handled("doomed")
    assert len(calls) >= 2  # it was retried...
    assert all(when < query.deadline for when in calls)  # ...but never past its deadline
    error = (await answers(redis, streams.answers))["doomed"].error or ""
    assert error.startswith("deadline exceeded at the tester")
    assert await pending(redis, stage, streams.queries) == 0


async def test_retry_goes_on_for_the_queries_whose_deadline_has_not_passed(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    """A batch of a query with a short deadline and one with a long one, the store down for
    five attempts (~3 s of backoff): the first gets its error answer at its deadline, the
    second is retried until the store is back, and served."""
    handler = Handler(streams.retrieved, failing={"short", "long"}, fail_times=5)
    subscribe(stage, handler, streams)
    await stage.start()
    short = Query(query_id="short", text="q", deadline=deadline_after(0.25))
    long = Query(query_id="long", text="q", deadline=deadline_after(60))
    assert short.deadline is not None
    for query in (short, long):
        await redis.xadd(streams.queries, wire.encode(query))

    await asyncio.wait_for(
        stage.subscriptions[0].process(await read(redis, streams.queries, stage.group)), 15
    )

    assert all(when < short.deadline for when in handler.handled("short"))
    assert len(handler.handled("long")) > len(handler.handled("short"))
    assert await outputs(redis, streams.retrieved) == ["long"]
    got = await answers(redis, streams.answers)
    assert set(got) == {"short"}
    assert (got["short"].error or "").startswith("deadline exceeded at the tester")
    assert await pending(redis, stage, streams.queries) == 0


async def test_without_an_expiry_hook_a_late_event_is_dead_lettered(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    handler = Handler(streams.retrieved)
    stage.subscribe(streams.queries, QUERY, handler, deadline_of=lambda query: query.deadline)
    await stage.start()
    await redis.xadd(
        streams.queries, wire.encode(Query(query_id="x", text="q", deadline=deadline_after(-5)))
    )
    await stage.subscriptions[0].process(await read(redis, streams.queries, stage.group))
    assert handler.calls == []
    [(_, fields)] = await redis.xrange(streams.dlq)
    assert b"deadline exceeded" in fields[b"event"]


async def test_clients_set_the_deadline_to_now_plus_their_timeout(
    redis: Redis, streams: StreamSettings
) -> None:
    from services.gateway.models import QueryRequest
    from services.gateway.querying import new_query
    from shared.client import ask

    before = utcnow()
    with pytest.raises(TimeoutError):  # no stage runs: nobody answers
        await ask(redis, "anyone?", timeout=0.3, streams=streams)
    [(_, fields)] = await redis.xrange(streams.queries)
    sent = Query.model_validate_json(fields[b"event"])
    assert sent.deadline is not None
    assert 0.3 <= (sent.deadline - before).total_seconds() < 0.3 + 5

    gateway_query = new_query(QueryRequest(text="anyone?"), f"{streams.answers}.gw", 7.0)
    assert gateway_query.deadline is not None
    assert 7.0 <= (gateway_query.deadline - before).total_seconds() < 7.0 + 5


async def test_an_expired_query_is_answered_before_the_rest_of_its_batch_is_handled(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    """Its client is told at once, not after the batch's (possibly long) work: the handler of
    the live query is held until the late one's error answer is on the answers stream."""
    release = asyncio.Event()

    async def slow(queries: Sequence[Query]) -> list[Outcome]:
        await release.wait()
        return [[Publication(streams.retrieved, q)] for q in queries]

    stage.subscribe(
        streams.queries, QUERY, slow,
        deadline_of=lambda query: query.deadline,
        on_expired=lambda query: deadline_answer(query, streams, "tester"),
    )  # fmt: skip
    await stage.start()
    for query in (
        Query(query_id="live", text="q", deadline=deadline_after(60)),
        Query(query_id="late", text="q", deadline=deadline_after(-1)),
    ):
        await redis.xadd(streams.queries, wire.encode(query))
    batch = asyncio.create_task(
        stage.subscriptions[0].process(await read(redis, streams.queries, stage.group))
    )
    try:
        assert await redis.xread({streams.answers: b"0-0"}, block=10_000)  # waits for it
        assert list(await answers(redis, streams.answers)) == ["late"]
        assert await pending(redis, stage, streams.queries) == 1  # "late" acked, "live" not yet
    finally:
        release.set()
        await batch
    assert await outputs(redis, streams.retrieved) == ["live"]
    assert await pending(redis, stage, streams.queries) == 0


async def test_a_handler_settles_a_query_that_expired_midway_at_once_and_only_once(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    """`settle_now` commits that query's error answer (and its ack) while the rest of the batch
    is still being handled; a transient retry of the batch does not hand it over again, and
    the batch's own commit does not publish it twice."""
    release = asyncio.Event()
    calls: list[list[str]] = []

    async def handler(queries: Sequence[Query]) -> list[Outcome]:
        calls.append([q.query_id for q in queries])
        outcomes: list[Outcome] = []
        for query in queries:
            if query.query_id == "waited":  # say its deadline passed while it waited its turn
                outcomes.append(await deadline_answer_now(query, query, streams, "tester"))
            else:
                outcomes.append([Publication(streams.retrieved, query)])
        if len(calls) == 1:
            raise TransientError("store down")
        await release.wait()
        return outcomes

    subscribe(stage, Handler(streams.retrieved), streams)
    stage.subscriptions[0].handle = handler
    await stage.start()
    for query_id in ("waited", "live"):
        query = Query(query_id=query_id, text="q", deadline=deadline_after(60))
        await redis.xadd(streams.queries, wire.encode(query))
    batch = asyncio.create_task(
        stage.subscriptions[0].process(await read(redis, streams.queries, stage.group))
    )
    try:
        assert await redis.xread({streams.answers: b"0-0"}, block=10_000)  # while held
        assert await pending(redis, stage, streams.queries) == 1  # "live" is still in the works
    finally:
        release.set()
        await batch

    assert calls == [["waited", "live"], ["live"]]
    assert list(await answers(redis, streams.answers)) == ["waited"]
    assert await redis.xlen(streams.answers) == 1
    assert await outputs(redis, streams.retrieved) == ["live"]
    assert await pending(redis, stage, streams.queries) == 0
