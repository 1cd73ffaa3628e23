"""`ragstream status` against a real Redis populated by hand: every number it reports."""

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import redis as sync_redis
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from ragstream.status import Status, gather
from shared import doc_state, wire
from shared.contracts import DeadLetter, DocIndexed, IndexOutcome
from shared.readiness import ready_key
from shared.settings import StreamSettings
from tests.conftest import stream_env

FRESHNESS_MS = [100.0 * n for n in range(1, 11)]  # 100 … 1000 ms in the window


async def server_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def ack(
    doc_id: str, version: int, outcome: IndexOutcome, freshness_ms: float, n: int = 3
) -> DocIndexed:
    indexed_at = datetime.now(UTC)
    return DocIndexed(
        doc_id=doc_id,
        version=version,
        outcome=outcome,
        n_chunks=n,
        doc_emitted_at=indexed_at - timedelta(milliseconds=freshness_ms),
        indexed_at=indexed_at,
    )


async def populate(redis: Redis, streams: StreamSettings) -> None:
    now = await server_ms(redis)
    # docs: 5 entries, the first published a minute ago; the chunker read 2 of them, acked none.
    await redis.xadd(streams.docs, {"event": "{}"}, id=f"{now - 60_000}-0")
    for _ in range(4):
        await redis.xadd(streams.docs, {"event": "{}"})
    await redis.xgroup_create(streams.docs, "chunker", id="0")
    await redis.xreadgroup("chunker", "c1", {streams.docs: ">"}, count=2)
    await redis.set(ready_key(streams.docs, "chunker", "c1"), "1", px=60_000)
    # chunks: an empty stream whose group has nothing to do and no live consumer.
    await redis.xgroup_create(streams.chunks, "embedder", id="$", mkstream=True)
    # retrieved: a group created at an id after a deletion: Redis cannot tell its lag.
    ids = [await redis.xadd(streams.retrieved, {"event": "{}"}) for _ in range(3)]
    await redis.xdel(streams.retrieved, ids[1])
    await redis.xgroup_create(streams.retrieved, "reranker", id=ids[0])
    # indexed: one ack before the window, ten in it, and a stale one (left out).
    old = ack("old", 1, IndexOutcome.INDEXED, 50_000)
    await redis.xadd(streams.indexed, wire.encode(old), id=f"{now - 10 * 60_000}-0")
    for n, ms in enumerate(FRESHNESS_MS):
        await redis.xadd(streams.indexed, wire.encode(ack(f"d{n}", 1, IndexOutcome.INDEXED, ms)))
    await redis.xadd(streams.indexed, wire.encode(ack("d0", 0, IndexOutcome.STALE, 99_000)))
    # the per-doc state: 3 live docs (4 + 5 + 6 chunks), one deleted after being indexed.
    async with redis.pipeline(transaction=True) as pipe:
        for doc_id, version, outcome, n in [
            ("a", 1, IndexOutcome.INDEXED, 4),
            ("b", 1, IndexOutcome.INDEXED, 5),
            ("c", 2, IndexOutcome.INDEXED, 6),
            ("gone", 1, IndexOutcome.INDEXED, 7),
            ("gone", 2, IndexOutcome.DELETED, 0),
        ]:
            doc_state.record(
                pipe, [ack(doc_id, version, outcome, 1, n)], indexed_stream=streams.indexed
            )
        await pipe.execute()
    for n in range(2):
        letter = DeadLetter(
            stage="chunker", source_stream=streams.docs, entry_id=f"{n}-1", reason="bad"
        )
        await redis.xadd(streams.dlq, wire.encode(letter))


async def test_status_reports_what_redis_holds(redis: Redis, streams: StreamSettings) -> None:
    await populate(redis, streams)
    status = await gather(redis, streams, minutes=5)
    roles = {s.role: s for s in status.streams}
    assert list(roles) == [
        "docs",
        "chunks",
        "indexed",
        "queries",
        "retrieved",
        "reranked",
        "answers",
        "dlq",
    ]

    docs = roles["docs"]
    assert docs.name == streams.docs and docs.length == 5
    [chunker] = docs.groups
    assert (chunker.name, chunker.lag, chunker.pending, chunker.consumers) == (
        "chunker",
        3,
        2,
        ["c1"],
    )
    assert chunker.oldest_pending_age_s is not None
    assert 59 <= chunker.oldest_pending_age_s <= 70

    [embedder] = roles["chunks"].groups
    assert (embedder.lag, embedder.pending, embedder.oldest_pending_age_s, embedder.consumers) == (
        0,
        0,
        None,
        [],
    )
    [reranker] = roles["retrieved"].groups
    assert reranker.lag is None
    assert roles["queries"].length == 0 and roles["queries"].groups == []
    assert roles["indexed"].length == 12

    assert status.dlq_size == 2 and roles["dlq"].length == 2
    assert (status.index.docs, status.index.live_docs, status.index.deleted_docs) == (4, 3, 1)
    assert status.index.chunks == 4 + 5 + 6
    assert status.index.docs == await doc_state.count(redis, streams.indexed)

    fresh = status.freshness
    assert (fresh.samples, fresh.window_minutes) == (10, 5)
    assert fresh.p50_ms == pytest.approx(600, abs=1)  # nearest rank over 100 … 1000
    assert fresh.p99_ms == pytest.approx(1000, abs=1)
    wider = await gather(redis, streams, minutes=15)
    assert wider.freshness.samples == 11  # the old ack too
    assert wider.freshness.p99_ms == pytest.approx(50_000, abs=1)


async def test_status_of_an_empty_redis(redis: Redis, streams: StreamSettings) -> None:
    status = await gather(redis, streams)
    assert all(s.length == 0 and s.groups == [] for s in status.streams)
    assert status.dlq_size == 0 and status.index.docs == 0
    assert (status.freshness.samples, status.freshness.p50_ms) == (0, None)


def run_cli(
    redis_server: RedisServer, streams: StreamSettings, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **stream_env(streams), "RAG_REDIS_URL": redis_server.url, "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "ragstream", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


async def test_status_json_parses(
    redis: Redis, streams: StreamSettings, redis_server: RedisServer
) -> None:
    await populate(redis, streams)
    result = run_cli(redis_server, streams, "status", "--json", "--minutes", "5")
    assert result.returncode == 0, result.stderr
    status = Status.model_validate(json.loads(result.stdout))
    assert status.dlq_size == 2
    assert (status.index.live_docs, status.index.chunks) == (3, 15)
    assert status.freshness.p50_ms == pytest.approx(600, abs=1)


async def test_status_table_for_people(
    redis: Redis, streams: StreamSettings, redis_server: RedisServer
) -> None:
    await populate(redis, streams)
    result = run_cli(redis_server, streams, "status")
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert streams.docs in table and streams.dlq in table
    assert "unknown" in table  # the reranker's lag
    assert "3 docs (1 deleted), 15 chunks" in table
    assert "p50 600 ms · p99 1,000 ms (10 docs)" in table
    assert "dead letters: 2" in table


def test_status_without_redis_is_one_line(streams: StreamSettings) -> None:
    env = {**os.environ, **stream_env(streams), "RAG_REDIS_URL": "redis://127.0.0.1:1/0"}
    result = subprocess.run(
        [sys.executable, "-m", "ragstream", "--log-format", "console", "status"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("✗ Redis unreachable at redis://127.0.0.1:1/0")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_status_watch_refreshes_until_ctrl_c(
    redis_server: RedisServer, streams: StreamSettings
) -> None:
    async def setup() -> None:
        client = Redis.from_url(redis_server.url)
        await populate(client, streams)
        await client.aclose()

    asyncio.run(setup())
    env = {**os.environ, **stream_env(streams), "RAG_REDIS_URL": redis_server.url}
    process = subprocess.Popen(
        [sys.executable, "-m", "ragstream", "status", "--json", "--watch", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    first = Status.model_validate_json(process.stdout.readline())
    sync_redis.Redis.from_url(redis_server.url).xadd(streams.dlq, {"event": "{}"})
    while (latest := Status.model_validate_json(process.stdout.readline())).dlq_size == 2:
        pass
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert (first.dlq_size, latest.dlq_size) == (2, 3)  # refreshed
    assert "Traceback" not in err
