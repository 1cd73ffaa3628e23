"""The per-doc state the embedder records beside its acks: newest version wins whatever order
replicas commit in, stale acks change nothing, and it is written in the ack's transaction."""

from collections.abc import Sequence
from functools import partial

from pydantic import TypeAdapter
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from shared import doc_state, wire
from shared.contracts import DocIndexed, IndexOutcome
from shared.contracts.base import utcnow
from shared.settings import RedisSettings, StreamSettings
from shared.stage import Entry, Outcome, Publication, Stage
from shared.stage_settings import StageSettings


def ack(version: int, outcome: IndexOutcome, n_chunks: int = 3) -> DocIndexed:
    now = utcnow()
    return DocIndexed(doc_id="d1", version=version, outcome=outcome, n_chunks=n_chunks,
                      doc_emitted_at=now, indexed_at=now)  # fmt: skip


async def record(redis: Redis, stream: str, *events: DocIndexed) -> None:
    for event in events:
        async with redis.pipeline(transaction=True) as pipe:
            doc_state.record(pipe, [event], indexed_stream=stream)
            await pipe.execute()


async def test_newest_version_wins_in_any_order(redis: Redis, streams: StreamSettings) -> None:
    await record(redis, streams.indexed, ack(5, IndexOutcome.INDEXED, 7),
                 ack(4, IndexOutcome.INDEXED, 2), ack(3, IndexOutcome.STALE))  # fmt: skip
    state = await doc_state.read(redis, streams.indexed, "d1")
    assert state is not None
    assert (state.version, state.deleted, state.n_chunks) == (5, False, 7)

    await record(redis, streams.indexed, ack(5, IndexOutcome.DELETED, 0))  # delete beats upsert
    state = await doc_state.read(redis, streams.indexed, "d1")
    assert state is not None
    assert (state.version, state.deleted) == (5, True)
    assert await doc_state.read(redis, streams.indexed, "other") is None
    assert await doc_state.count(redis, streams.indexed) == 1


async def test_one_commit_records_many_docs_newest_last_or_not(
    redis: Redis, streams: StreamSettings
) -> None:
    events = [ack(4, IndexOutcome.INDEXED, 2), ack(6, IndexOutcome.INDEXED, 3),
              ack(5, IndexOutcome.INDEXED, 9),
              ack(1, IndexOutcome.INDEXED, 1).model_copy(update={"doc_id": "d2"})]  # fmt: skip
    async with redis.pipeline(transaction=True) as pipe:
        doc_state.record(pipe, events, indexed_stream=streams.indexed)
        assert len(pipe.command_stack) == 1  # one command, however many events
        await pipe.execute()
    first, second = await doc_state.read_many(redis, streams.indexed, ["d1", "d2"])
    assert first is not None and (first.version, first.n_chunks) == (6, 3)
    assert second is not None and (second.version, second.n_chunks) == (1, 1)


async def test_recorded_in_the_transaction_that_acks(
    redis_server: RedisServer, redis: Redis, streams: StreamSettings
) -> None:
    async def handle(events: Sequence[DocIndexed]) -> list[Outcome]:
        return [[Publication(streams.indexed, e)] for e in events]

    redis_settings = RedisSettings.model_validate({"RAG_REDIS_URL": redis_server.url})
    stage = Stage("embedder", StageSettings(consumer="c1"), redis_settings, streams)
    stage.subscribe(streams.chunks, TypeAdapter(DocIndexed), handle)
    stage.project(streams.indexed, partial(doc_state.record, indexed_stream=streams.indexed))
    await stage.start()
    await redis.xadd(streams.chunks, wire.encode(ack(2, IndexOutcome.INDEXED, 4)))
    response = await redis.xreadgroup(stage.group, "c1", {streams.chunks: ">"})
    await stage.subscriptions[0].process([Entry(i, f) for _, es in response for i, f in es])
    await stage.redis.aclose()

    state = await doc_state.read(redis, streams.indexed, "d1")
    assert state is not None
    assert (state.version, state.n_chunks) == (2, 4)
    assert await redis.xlen(streams.indexed) == 1
