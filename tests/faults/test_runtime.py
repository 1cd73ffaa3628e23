"""The stage runtime's reliability mechanisms, in-process against a real Redis: poison
isolation, giving up after N deliveries, heartbeats, safe trimming, stale consumers."""

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest
from pydantic import BaseModel, TypeAdapter
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from shared import wire
from shared.contracts import DeadLetter
from shared.errors import PermanentError, TransientError
from shared.settings import RedisSettings, StreamSettings
from shared.stage import Entry, Outcome, Publication, Stage
from shared.stage_settings import StageSettings
from shared.stream_maintenance import remove_stale_consumers, safe_floor, trim_acknowledged


class Item(BaseModel):
    name: str


ITEM = TypeAdapter(Item)


class Handler:
    """Echoes items to the output stream; `boom*` items raise, `flaky` fails transiently once."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.calls: list[list[str]] = []
        self.flaky_failures = 0

    async def __call__(self, items: Sequence[Item]) -> list[Outcome]:
        self.calls.append([i.name for i in items])
        if any(i.name.startswith("boom") for i in items):
            raise RuntimeError("bug")
        if any(i.name == "flaky" for i in items) and self.flaky_failures < 1:
            self.flaky_failures += 1
            raise TransientError("store down")
        return [[Publication(self.out, i)] for i in items]


@pytest.fixture
async def stage(redis_server: RedisServer, streams: StreamSettings) -> AsyncIterator[Stage]:
    settings = StageSettings(
        consumer="c1", reclaim_idle_ms=0, max_deliveries=2, transient_retry_s=5, batch_size=10
    )
    redis_settings = RedisSettings.model_validate({"RAG_REDIS_URL": redis_server.url})
    stage = Stage("tester", settings, redis_settings, streams)
    yield stage
    await stage.redis.aclose()


async def read(redis: Redis, stream: str, group: str, consumer: str = "c1") -> list[Entry]:
    response = await redis.xreadgroup(group, consumer, {stream: ">"}, count=100)
    return [Entry(i, f) for _, entries in response for i, f in entries]


async def add(redis: Redis, stream: str, *names: str) -> list[bytes]:
    return [await redis.xadd(stream, wire.encode(Item(name=n))) for n in names]


async def outputs(redis: Redis, stream: str) -> list[str]:
    return [Item.model_validate_json(f[b"event"]).name for _, f in await redis.xrange(stream)]


async def test_poison_entry_is_isolated_and_dead_lettered_after_max_deliveries(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    handler = Handler(streams.chunks)
    stage.subscribe(streams.docs, ITEM, handler)
    await stage.start()
    await add(redis, streams.docs, "a", "boom", "b")
    await stage.subscriptions[0].process(await read(redis, streams.docs, stage.group))

    assert await outputs(redis, streams.chunks) == ["a", "b"]  # the good ones flowed
    pending = await redis.xpending(streams.docs, stage.group)
    assert pending["pending"] == 1  # the poison entry waits for redelivery

    for _ in range(3):  # deliveries 2 and 3: the second fails again, the third gives up
        await stage.reclaim(stage.subscriptions[0])
    assert (await redis.xpending(streams.docs, stage.group))["pending"] == 0
    [(_, fields)] = await redis.xrange(streams.dlq)
    letter = DeadLetter.model_validate_json(fields[b"event"])
    assert letter.deliveries == 3
    assert (
        letter.reason == "gave up after 2 deliveries (max_deliveries=2); last error: RuntimeError"
    )
    assert fields[b"payload"] == wire.encode(Item(name="boom"))[b"event"]
    assert await outputs(redis, streams.chunks) == ["a", "b"]


async def test_transient_error_is_retried_in_process(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    handler = Handler(streams.chunks)
    stage.subscribe(streams.docs, ITEM, handler)
    await stage.start()
    await add(redis, streams.docs, "flaky")
    await stage.subscriptions[0].process(await read(redis, streams.docs, stage.group))
    assert await outputs(redis, streams.chunks) == ["flaky"]
    assert handler.calls == [["flaky"], ["flaky"]]
    assert (await redis.xpending(streams.docs, stage.group))["pending"] == 0


async def test_permanent_error_dead_letters_without_retry(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    async def reject(items: Sequence[Item]) -> list[Outcome]:
        return [PermanentError("no good") for _ in items]

    stage.subscribe(streams.docs, ITEM, reject)
    await stage.start()
    await add(redis, streams.docs, "x")
    await redis.xadd(streams.docs, {b"event": b"{not json"})
    await stage.subscriptions[0].process(await read(redis, streams.docs, stage.group))
    letters = [
        DeadLetter.model_validate_json(f[b"event"]) for _, f in await redis.xrange(streams.dlq)
    ]
    assert [letter.reason for letter in letters] == ["no good", letters[1].reason]
    assert letters[1].reason.startswith("malformed JSON")
    assert (await redis.xpending(streams.docs, stage.group))["pending"] == 0


async def test_permanent_error_raised_for_a_batch_dead_letters_only_its_entry(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    """A store that refuses one doc of a batch raises for the whole batch: the runtime retries
    entry by entry and dead-letters the refused one at once, with the store's reason."""
    calls: list[list[str]] = []

    async def store_like(items: Sequence[Item]) -> list[Outcome]:
        calls.append([i.name for i in items])
        if any(i.name == "refused" for i in items):
            raise PermanentError("Weaviate refused 1 of 1 chunk rows: vector lengths don't match")
        return [[Publication(streams.chunks, i)] for i in items]

    stage.subscribe(streams.docs, ITEM, store_like)
    await stage.start()
    await add(redis, streams.docs, "a", "refused", "b")
    await stage.subscriptions[0].process(await read(redis, streams.docs, stage.group))
    assert calls == [["a", "refused", "b"], ["a"], ["refused"], ["b"]]
    assert await outputs(redis, streams.chunks) == ["a", "b"]
    [(_, fields)] = await redis.xrange(streams.dlq)
    letter = DeadLetter.model_validate_json(fields[b"event"])
    assert letter.reason.startswith("Weaviate refused") and letter.deliveries == 1
    assert (await redis.xpending(streams.docs, stage.group))["pending"] == 0


async def test_heartbeat_keeps_in_flight_entries_from_being_reclaimed(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    release = asyncio.Event()

    async def slow(items: Sequence[Item]) -> list[Outcome]:
        await release.wait()
        return [[] for _ in items]

    stage.settings.reclaim_idle_ms = 300
    stage.subscribe(streams.docs, ITEM, slow)
    await stage.start()
    await add(redis, streams.docs, "slow")
    task = asyncio.create_task(
        stage.subscriptions[0].process(await read(redis, streams.docs, stage.group))
    )
    for _ in range(5):
        await asyncio.sleep(0.2)
        await stage._heartbeat()
        # another consumer would reclaim it if idle: it never is
        _, claimed, _ = await redis.xautoclaim(streams.docs, stage.group, "c2", 300, count=10)
        assert claimed == []
    release.set()
    await task
    assert (await redis.xpending(streams.docs, stage.group))["pending"] == 0


async def test_trim_removes_only_entries_every_group_acked(
    redis: Redis, streams: StreamSettings
) -> None:
    stream = streams.docs
    ids = [await redis.xadd(stream, {b"n": str(i).encode()}) for i in range(10)]
    await redis.xgroup_create(stream, "g1", id="0")
    await redis.xgroup_create(stream, "g2", id="0")
    await redis.xreadgroup("g1", "c", {stream: ">"}, count=6)  # 0..5 delivered
    await redis.xack(stream, "g1", *ids[:3], ids[4])  # 3 and 5 still pending
    await redis.xreadgroup("g2", "c", {stream: ">"}, count=2)  # 0..1 delivered
    await redis.xack(stream, "g2", *ids[:2])

    assert await safe_floor(redis, stream) is not None
    assert await trim_acknowledged(redis, stream, approximate=False) == 1  # only g2's floor: id 1
    assert [i for i, _ in await redis.xrange(stream)] == ids[1:]

    await redis.xreadgroup("g2", "c", {stream: ">"})
    await redis.xack(stream, "g2", *ids)
    assert await trim_acknowledged(redis, stream, approximate=False) == 2  # g1 still needs 3
    remaining = [i for i, _ in await redis.xrange(stream)]
    assert remaining == ids[3:]
    pending = await redis.xpending_range(stream, "g1", "-", "+", 10)
    assert [p["message_id"] for p in pending] == [ids[3], ids[5]]  # nothing pending was lost


async def test_stream_without_groups_is_not_trimmed(redis: Redis, streams: StreamSettings) -> None:
    await redis.xadd(streams.docs, {b"n": b"1"})
    assert await trim_acknowledged(redis, streams.docs, approximate=False) == 0
    assert await redis.xlen(streams.docs) == 1


async def test_stale_consumers_without_pending_entries_are_removed(
    redis: Redis, streams: StreamSettings
) -> None:
    stream = streams.docs
    await redis.xgroup_create(stream, "g", id="0", mkstream=True)
    await redis.xadd(stream, {b"n": b"1"})
    await redis.xreadgroup("g", "holder", {stream: ">"})  # has a pending entry
    # Nothing pending. (A read that delivers nothing creates no consumer on Redis 7.0.)
    await redis.xgroup_createconsumer(stream, "g", "idle")
    await redis.xgroup_createconsumer(stream, "g", "me")
    await asyncio.sleep(0.05)
    removed = await remove_stale_consumers(redis, stream, "g", idle_s=0.01, keep="me")
    assert removed == ["idle"]
    names = {c["name"] for c in await redis.xinfo_consumers(stream, "g")}
    assert names == {b"holder", b"me"}


async def test_notification_streams_are_trimmed_by_age_on_publish(
    stage: Stage, redis: Redis, streams: StreamSettings
) -> None:
    for seq in range(150):  # old entries; approximate trimming drops whole 100-entry nodes
        await redis.xadd(streams.indexed, {b"old": b"1"}, id=f"1000-{seq}")
        await redis.xadd(streams.chunks, {b"old": b"1"}, id=f"1000-{seq}")
    stage.settings.retention_s = 60
    for _ in range(3):
        await stage.publish([Publication(streams.indexed, Item(name="new"))])
        await stage.publish([Publication(streams.chunks, Item(name="new"))])
    assert await redis.xlen(streams.indexed) < 153  # old notifications are going
    assert len(await outputs_named(redis, streams.indexed, "new")) == 3
    assert await redis.xlen(streams.chunks) == 153  # a stage input is never trimmed by age


async def outputs_named(redis: Redis, stream: str, name: str) -> list[bytes]:
    return [
        i for i, f in await redis.xrange(stream) if f.get(b"event", b"").find(name.encode()) > 0
    ]
