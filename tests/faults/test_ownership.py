"""Entry ownership in the stage runtime, against a real Redis: a consumer that froze longer than
`reclaim_idle_ms` while a sibling reclaimed its entry neither takes the entry back (heartbeat)
nor publishes its outputs (commit); a retried commit does not publish twice; the reclaim loop
does not hand an entry to a second handler in the process already handling it."""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest
from pydantic import BaseModel, TypeAdapter
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from shared import wire
from shared.settings import RedisSettings, StreamSettings
from shared.stage import Entry, Outcome, Publication, Stage
from shared.stage_settings import StageSettings

RECLAIM_IDLE_MS = 200
FROZEN_S = 0.6
"""Longer than RECLAIM_IDLE_MS: only a lower bound matters, a slow machine just waits longer."""


class Item(BaseModel):
    name: str


class Gated:
    """Echoes items to `out` once `release` is set; counts its calls (`entered`: one came)."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.calls = 0

    async def __call__(self, items: Sequence[Item]) -> list[Outcome]:
        self.calls += 1
        self.entered.set()
        await self.release.wait()
        return [[Publication(self.out, i)] for i in items]


@pytest.fixture
async def make_stage(
    redis_server: RedisServer, streams: StreamSettings
) -> AsyncIterator[Callable[[str, Gated], Awaitable[Stage]]]:
    made: list[Stage] = []

    async def make(consumer: str, handler: Gated) -> Stage:
        settings = StageSettings(
            consumer=consumer, reclaim_idle_ms=RECLAIM_IDLE_MS, batch_size=10, http_port=0
        )
        redis_settings = RedisSettings.model_validate({"RAG_REDIS_URL": redis_server.url})
        stage = Stage("tester", settings, redis_settings, streams)
        stage.subscribe(streams.docs, TypeAdapter(Item), handler)
        await stage.start()
        made.append(stage)
        return stage

    yield make
    for stage in made:
        await stage.redis.aclose()


async def read(redis: Redis, stream: str, group: str, consumer: str) -> list[Entry]:
    response = await redis.xreadgroup(group, consumer, {stream: ">"}, count=100)
    return [Entry(i, f) for _, entries in response for i, f in entries]


async def outputs(redis: Redis, stream: str) -> list[str]:
    return [Item.model_validate_json(f[b"event"]).name for _, f in await redis.xrange(stream)]


async def owner(redis: Redis, stream: str, group: str, entry_id: bytes) -> str | None:
    pending = await redis.xpending_range(stream, group, entry_id, entry_id, 1)
    return pending[0]["consumer"].decode() if pending else None


async def entered(handler: Gated, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        await handler.entered.wait()


async def test_heartbeat_does_not_take_back_an_entry_a_sibling_reclaimed(
    make_stage: Callable[[str, Gated], Awaitable[Stage]], redis: Redis, streams: StreamSettings
) -> None:
    """The issue: the heartbeat's XCLAIM (min-idle 0) took back an entry a sibling had
    reclaimed, so both handled it and both published. (Fails on the old heartbeat.)"""
    slow, sibling = Gated(streams.chunks), Gated(streams.chunks)
    a, b = await make_stage("c1", slow), await make_stage("c2", sibling)
    entry_id = await redis.xadd(streams.docs, wire.encode(Item(name="x")))
    handling = asyncio.create_task(
        a.deliver(a.subscriptions[0], await read(redis, streams.docs, a.group, "c1"))
    )
    await entered(slow)
    await asyncio.sleep(FROZEN_S)  # c1 froze: no heartbeat for longer than reclaim_idle_ms
    reclaiming = asyncio.create_task(b.reclaim(b.subscriptions[0]))
    await entered(sibling)
    assert await owner(redis, streams.docs, a.group, entry_id) == "c2"

    await a._heartbeat()  # c1 thaws; its heartbeat runs first
    assert await owner(redis, streams.docs, a.group, entry_id) == "c2"  # not taken back
    assert a.in_flight.by_stream() == {}  # and no longer kept by c1's heartbeat

    slow.release.set()
    await handling  # c1 finishes and commits: the entry is c2's now, nothing is published
    assert await outputs(redis, streams.chunks) == []
    assert await owner(redis, streams.docs, a.group, entry_id) == "c2"

    sibling.release.set()
    assert await reclaiming == 1
    assert await outputs(redis, streams.chunks) == ["x"]
    assert (await redis.xpending(streams.docs, a.group))["pending"] == 0


async def test_a_commit_retried_after_its_reply_was_lost_does_not_publish_twice(
    make_stage: Callable[[str, Gated], Awaitable[Stage]], redis: Redis, streams: StreamSettings
) -> None:
    stage = await make_stage("c1", Gated(streams.chunks))
    await redis.xadd(streams.docs, wire.encode(Item(name="x")))
    entries = await read(redis, streams.docs, stage.group, "c1")
    outcomes: dict[bytes, Outcome] = {
        e.id: [Publication(streams.chunks, Item(name="x"))] for e in entries
    }
    subscription = stage.subscriptions[0]
    await stage.commit(subscription, entries, outcomes)
    await stage.commit(subscription, entries, outcomes)  # as if the first reply never came
    assert await outputs(redis, streams.chunks) == ["x"]
    assert (await redis.xpending(streams.docs, stage.group))["pending"] == 0


async def test_reclaim_does_not_handle_twice_what_the_process_is_handling(
    make_stage: Callable[[str, Gated], Awaitable[Stage]], redis: Redis, streams: StreamSettings
) -> None:
    """Its own heartbeat could not run (a frozen event loop): the reclaim loop of the same
    process finds the entry idle, takes it, and leaves it to the handler it already has."""
    handler = Gated(streams.chunks)
    stage = await make_stage("c1", handler)
    await redis.xadd(streams.docs, wire.encode(Item(name="x")))
    handling = asyncio.create_task(
        stage.deliver(stage.subscriptions[0], await read(redis, streams.docs, stage.group, "c1"))
    )
    await entered(handler)
    await asyncio.sleep(FROZEN_S)
    assert await stage.reclaim(stage.subscriptions[0]) == 0
    handler.release.set()
    await handling
    assert handler.calls == 1
    assert await outputs(redis, streams.chunks) == ["x"]
    assert (await redis.xpending(streams.docs, stage.group))["pending"] == 0
