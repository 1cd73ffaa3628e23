"""Answer subscriptions on a real Redis: recording, ending, expiry, bounds, and the watcher's
decisions (`services.generator.invalidation`) on the recorded state."""

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from redis.asyncio import Redis

from services.generator.invalidation import invalidate_batch
from services.generator.settings import GeneratorSettings
from services.generator.subscribing import Subscriptions
from shared import answer_watch, doc_state
from shared.answer_watch import Watch, WatchKeys
from shared.contracts import (
    Answer,
    AnswerInvalidated,
    Citation,
    DocIndexed,
    IndexOutcome,
    Query,
    Reranked,
    StageTimings,
)
from shared.settings import StreamSettings
from shared.stage import Outcome, Publication


def now_ms() -> int:
    return int(time.time() * 1000)


def subscription(
    reply_to: str, cited: dict[str, int], *, ttl_ms: int = 60_000, query: Query | None = None
) -> Watch:
    return Watch(
        reply_to=reply_to,
        answer_id="6a1f0e52-0000-4000-8000-000000000001",
        cited=cited,
        until_ms=now_ms() + ttl_ms,
        query=query.model_dump_json() if query is not None else None,
    )


async def record(
    redis: Redis, keys: WatchKeys, query_id: str, watch: Watch, *, per_doc: int = 100,
    total: int = 100,
) -> int:  # fmt: skip
    async with redis.pipeline(transaction=True) as pipe:
        answer_watch.watch(
            pipe, keys, query_id, watch, now_ms=now_ms(), max_per_doc=per_doc, max_total=total
        )
        (result,) = await pipe.execute()
    return int(result)


def ack(doc_id: str, version: int, outcome: IndexOutcome = IndexOutcome.INDEXED) -> DocIndexed:
    now = datetime.now(UTC)
    return DocIndexed(
        doc_id=doc_id, version=version, outcome=outcome, n_chunks=1,
        doc_emitted_at=now, indexed_at=now,
    )  # fmt: skip


async def test_recorded_subscription_is_read_back_and_expires_with_redis_ttls(
    redis: Redis, streams: StreamSettings
) -> None:
    keys = WatchKeys(streams.indexed)
    watch = subscription(f"{streams.answers}.c.1", {"mars": 3, "webb": 1}, ttl_ms=30_000)
    assert await record(redis, keys, "q1", watch) == 1
    assert await answer_watch.watchers(redis, keys, ["mars", "webb", "none"]) == {
        "mars": {"q1": 3},
        "webb": {"q1": 1},
    }
    assert (await answer_watch.subscriptions(redis, keys, ["q1"]))["q1"] == watch
    for key in (keys.doc("mars"), keys.doc("webb")):
        assert 0 < await redis.pttl(key) <= 30_000
    assert 30_000 < await redis.pttl(keys.answer("q1")) <= 30_000 + answer_watch.RECORD_GRACE_MS
    assert await redis.zcard(keys.all) == 1


async def test_a_subscription_ends_doc_by_doc_then_entirely(
    redis: Redis, streams: StreamSettings
) -> None:
    keys = WatchKeys(streams.indexed)
    await record(redis, keys, "q1", subscription("r", {"mars": 3, "webb": 1}))
    async with redis.pipeline(transaction=True) as pipe:
        answer_watch.unwatch_doc(pipe, keys, "q1", "mars", 3)
        await pipe.execute()
    assert await answer_watch.watchers(redis, keys, ["mars", "webb"]) == {"webb": {"q1": 1}}
    assert (await answer_watch.subscriptions(redis, keys, ["q1"]))["q1"].cited == {"webb": 1}
    async with redis.pipeline(transaction=True) as pipe:
        answer_watch.unwatch_doc(pipe, keys, "q1", "webb", 1)
        await pipe.execute()
    assert await answer_watch.subscriptions(redis, keys, ["q1"]) == {}
    assert await redis.zcard(keys.all) == 0
    assert await redis.exists(keys.doc("mars"), keys.doc("webb")) == 0


async def test_regenerating_keeps_what_the_next_answer_supersedes(
    redis: Redis, streams: StreamSettings
) -> None:
    keys = WatchKeys(streams.indexed)
    await record(redis, keys, "q1", subscription("r", {"mars": 3, "webb": 1}))
    async with redis.pipeline(transaction=True) as pipe:
        answer_watch.regenerating(pipe, keys, "q1")
        answer_watch.unwatch_doc(pipe, keys, "q1", "mars", 3)  # as committed after it
        await pipe.execute()
    watch = (await answer_watch.subscriptions(redis, keys, ["q1"]))["q1"]
    assert watch.regenerating and watch.cited == {}
    assert watch.answer_id == "6a1f0e52-0000-4000-8000-000000000001"
    assert await answer_watch.watchers(redis, keys, ["mars", "webb"]) == {}
    # the next answer's subscription replaces it
    await record(redis, keys, "q1", subscription("r", {"mars": 4}))
    assert await answer_watch.watchers(redis, keys, ["mars"]) == {"mars": {"q1": 4}}


async def test_bounds_refuse_new_subscriptions_and_ended_ones_make_room(
    redis: Redis, streams: StreamSettings
) -> None:
    keys = WatchKeys(streams.indexed)
    assert await record(redis, keys, "q1", subscription("r", {"hot": 1}), per_doc=2) == 1
    assert await record(redis, keys, "q2", subscription("r", {"hot": 1}, ttl_ms=300), per_doc=2)
    assert await record(redis, keys, "q3", subscription("r", {"hot": 1}), per_doc=2) == -2
    assert await record(redis, keys, "q4", subscription("r", {"cold": 1}), total=2) == -1
    assert int(await redis.get(keys.refused) or 0) == 2
    assert set((await answer_watch.watchers(redis, keys, ["hot"]))["hot"]) == {"q1", "q2"}
    await asyncio.sleep(0.6)  # q2 ends
    assert await record(redis, keys, "q3", subscription("r", {"hot": 1}), per_doc=2) == 1
    assert set((await answer_watch.watchers(redis, keys, ["hot"]))["hot"]) == {"q1", "q3"}
    assert await redis.zcard(keys.all) == 2  # q2 forgotten


async def test_watcher_invalidates_only_older_citations_and_skips_ended_subscriptions(
    redis: Redis, streams: StreamSettings
) -> None:
    keys = WatchKeys(streams.indexed)
    await record(redis, keys, "old", subscription("r.old", {"mars": 3}))
    await record(redis, keys, "current", subscription("r.current", {"mars": 5}))
    await record(redis, keys, "ended", subscription("r.ended", {"mars": 3}, ttl_ms=200))
    await record(redis, keys, "gone", subscription("r.gone", {"webb": 1}))
    await answer_watch.unwatch(redis, keys, "gone")
    await redis.hset(keys.doc("webb"), "gone", "1")  # a field left behind
    await asyncio.sleep(0.4)
    events = [ack("mars", 4), ack("mars", 5), ack("mars", 2, IndexOutcome.STALE), ack("webb", 2)]
    outcomes = await invalidate_batch(events, redis=redis, streams=streams)
    published = [(i, p.stream, p.event) for i, o in enumerate(outcomes) for p in o]  # type: ignore[union-attr]
    assert [(i, stream) for i, stream, _ in published] == [(1, "r.old")]
    invalidated = published[0][2]
    assert isinstance(invalidated, AnswerInvalidated)
    assert (invalidated.query_id, invalidated.old_version, invalidated.new_version) == (
        "old",
        3,
        5,
    )
    assert not invalidated.deleted
    assert await answer_watch.watchers(redis, keys, ["webb"]) == {}  # garbage dropped


async def test_watcher_regenerates_once_before_invalidating(
    redis: Redis, streams: StreamSettings
) -> None:
    keys = WatchKeys(streams.indexed)
    query = Query(query_id="q1", text="Who found the moons?", subscribe=True, regenerate=True)
    await record(redis, keys, "q1", subscription("r", {"mars": 3, "webb": 1}, query=query))
    events = [ack("webb", 2, IndexOutcome.DELETED), ack("mars", 4)]
    outcomes = await invalidate_batch(events, redis=redis, streams=streams)
    first, second = ([p.event for p in o] for o in outcomes)  # type: ignore[union-attr]
    assert isinstance(first[0], Query) and isinstance(first[1], AnswerInvalidated)
    regenerated = first[0]
    assert regenerated.query_id == "q1" and regenerated.event_id != query.event_id
    assert regenerated.after == {"webb": 2, "mars": 4}
    assert regenerated.subscribe and regenerated.regenerate
    assert first[1].deleted and first[1].doc_id == "webb"
    assert len(second) == 1 and isinstance(second[0], AnswerInvalidated)
    assert second[0].doc_id == "mars"


async def test_an_answer_outdated_while_it_was_generated_is_invalidated_in_its_own_commit(
    redis: Redis, streams: StreamSettings
) -> None:
    """The ack of v5 came while the answer (from v3) was generated, before its subscription
    existed: the watcher could not tell it, so the answer's own commit does."""
    async with redis.pipeline(transaction=True) as pipe:
        doc_state.record(pipe, [ack("mars", 5)], indexed_stream=streams.indexed)
        await pipe.execute()
    subscriptions = Subscriptions(redis, GeneratorSettings(), streams)
    query = Query(
        query_id="q1", text="Who found the moons?", subscribe=True, regenerate=True,
        reply_to=f"{streams.answers}.c.1",
    )  # fmt: skip
    citation = Citation(
        marker=1, chunk_id="c1", doc_id="mars", version=3, title="Mars", char_start=0,
        char_end=10, quote="Asaph Hall",
    )  # fmt: skip
    answer = Answer(query_id="q1", text="Asaph Hall [1].", citations=(citation,))

    async def answer_it(events: Sequence[Reranked]) -> list[Outcome]:
        return [[Publication(query.reply_to or "", answer)] for _ in events]

    reranked = Reranked(query=query, candidates=(), reranker="none", timings=StageTimings())
    (outcome,) = await subscriptions.answering(answer_it)([reranked])
    events = [p.event for p in outcome]  # type: ignore[union-attr]
    assert [type(e) for e in events] == [Answer, Query, AnswerInvalidated]
    told = events[2]
    assert isinstance(told, AnswerInvalidated)
    assert (told.doc_id, told.old_version, told.new_version) == ("mars", 3, 5)
    regenerated = events[1]
    assert isinstance(regenerated, Query) and regenerated.after == {"mars": 5}
