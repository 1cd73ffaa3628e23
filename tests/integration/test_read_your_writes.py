"""Own reply streams and read-your-writes, end to end: all five stages as processes, a real
Redis, a real index. The chunker is paused (SIGSTOP) where a test needs the index to lag."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ragstream.allinone import STAGES, Pipeline, running
from ragstream.ingest import after_of, publish_and_wait, publish_docs
from ragstream.redis_server import RedisServer
from shared import doc_state, wire
from shared.client import ask, send_and_wait
from shared.contracts import Answer, DocUpsert, Query
from shared.settings import StreamSettings
from tests.conftest import stream_env, unique_streams

pytestmark = pytest.mark.integration
AFTER_WAIT_S = 4.0
REPLY_TTL_S = 120

MARS_V1 = "# Mars\n\nMars has two small moons. They were discovered by Asaph Hall in 1877."
MARS_V2 = "# Mars\n\nMars has two small moons. They were catalogued by Wilhelmina Quist."
VENUS_V1 = "# Venus\n\nVenus has a dense atmosphere. Its clouds were mapped by Tomas Orrin."
VENUS_V2 = "# Venus\n\nVenus has a dense atmosphere. Its clouds were mapped by Lena Vasquez."
TOPICS = ("alpha", "beta", "gamma")


@dataclass
class RywPath:
    pipeline: Pipeline
    streams: StreamSettings
    redis_url: str


@pytest.fixture(scope="module")
def path(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RywPath]:
    streams = unique_streams()
    data_dir = tmp_path_factory.mktemp("ryw")
    env = {
        **stream_env(streams),
        "RAG_STORE_LANCEDB_PATH": str(data_dir / "index"),
        "RAG_RETRIEVER_AFTER_WAIT_S": str(AFTER_WAIT_S),
        "RAG_GENERATOR_REPLY_TTL_S": str(REPLY_TTL_S),
    }
    with running(data_dir, redis_server.url, STAGES, env, streams) as pipeline:
        yield RywPath(pipeline, streams, redis_server.url)


@contextlib.contextmanager
def paused(pipeline: Pipeline, stage: str) -> Iterator[None]:
    """The stage process stopped (SIGSTOP) in the block, resumed after."""
    pid = pipeline.children[stage].pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def index(redis: Redis, path: RywPath, *events: DocUpsert) -> None:
    report = await publish_and_wait(redis, events, streams=path.streams, timeout_s=60)
    assert len(report.outcomes) == len(events), report.summary()


async def served_version(redis: Redis, path: RywPath, doc_id: str) -> int | None:
    state = await doc_state.read(redis, path.streams.indexed, doc_id)
    return None if state is None else state.version


def cited(answer: Answer, doc_id: str) -> set[int]:
    return {c.version for c in answer.citations if c.doc_id == doc_id}


async def test_ask_reads_its_own_reply_stream_and_deletes_it(redis: Redis, path: RywPath) -> None:
    streams = path.streams
    await index(redis, path, DocUpsert(doc_id="mars", version=1, title="Mars", text=MARS_V1))
    answer = await ask(redis, "Who discovered the moons of Mars?", streams=streams, timeout=60)
    assert answer.error is None and cited(answer, "mars") == {1}
    sent = [
        Query.model_validate_json(wire.payload_of(fields))
        for _, fields in wire.stream_entries(await redis.xrange(streams.queries))
        if answer.query_id.encode() in wire.payload_of(fields)
    ]
    assert len(sent) == 1
    reply_to = sent[0].reply_to or ""
    assert reply_to.startswith(f"{streams.answers}.c.")
    assert not await redis.exists(reply_to)  # deleted when done
    shared = [f for _, f in wire.stream_entries(await redis.xrange(streams.answers))]
    assert not any(answer.query_id.encode() in wire.payload_of(f) for f in shared)


async def test_generator_sets_an_idle_expiry_on_client_reply_streams_only(
    redis: Redis, path: RywPath
) -> None:
    streams = path.streams
    mine = f"{streams.answers}.client-ttl"
    query = Query(query_id="q-ttl", text="Who discovered the moons of Mars?", reply_to=mine)
    answer = await send_and_wait(redis, query, timeout=60, streams=streams)
    assert answer.error is None
    assert 0 < await redis.ttl(mine) <= REPLY_TTL_S
    shared = Query(query_id="q-shared", text="Who discovered the moons of Mars?")
    assert (await send_and_wait(redis, shared, timeout=60, streams=streams)).error is None
    assert await redis.ttl(streams.answers) == -1  # the shared stream never expires


def test_ingest_prints_ids_that_name_the_published_entries(path: RywPath, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "io.md").write_text("# Io\n\nIo is the most volcanic body in the Solar System.\n")
    (folder / "europa.md").write_text("# Europa\n\nEuropa has an ocean under its ice.\n")
    env = {**os.environ, **stream_env(path.streams), "RAG_REDIS_URL": path.redis_url}
    env["RAGSTREAM_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "ragstream", "ingest", str(folder), "--print-ids",
         "--timeout", "120"],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line.split(" ") for line in result.stdout.splitlines()]
    assert sorted(doc_id for doc_id, _, _ in lines) == ["europa.md", "io.md"]

    async def check() -> None:
        redis = Redis.from_url(path.redis_url)
        try:
            for doc_id, version, entry_id in lines:
                ((_, fields),) = wire.stream_entries(
                    await redis.xrange(path.streams.docs, entry_id, entry_id)
                )
                event = DocUpsert.model_validate_json(wire.payload_of(fields))
                assert (event.doc_id, event.version) == (doc_id, int(version))
                assert await served_version(redis, path, doc_id) == int(version)
        finally:
            await redis.aclose()

    asyncio.run(check())


async def test_after_waits_until_the_index_serves_the_version(redis: Redis, path: RywPath) -> None:
    await index(redis, path, DocUpsert(doc_id="mars", version=1, title="Mars", text=MARS_V1))
    with paused(path.pipeline, "chunker"):
        published = await publish_docs(
            redis, [DocUpsert(doc_id="mars", version=2, title="Mars", text=MARS_V2)],
            streams=path.streams,
        )  # fmt: skip
        question = "Who catalogued the moons of Mars?"
        after = after_of(published)
        asking = asyncio.create_task(
            ask(redis, question, streams=path.streams, timeout=60, after=after)
        )
        await asyncio.sleep(1.0)  # the retriever has the query; the index still serves v1
        assert await served_version(redis, path, "mars") == 1
        assert not asking.done()
    answer = await asking
    assert not answer.possibly_stale
    assert cited(answer, "mars") == {2}
    assert "Wilhelmina Quist" in answer.text


async def test_after_gives_up_after_the_wait_and_says_possibly_stale(
    redis: Redis, path: RywPath
) -> None:
    await index(redis, path, DocUpsert(doc_id="venus", version=1, title="Venus", text=VENUS_V1))
    with paused(path.pipeline, "chunker"):
        published = await publish_docs(
            redis, [DocUpsert(doc_id="venus", version=2, title="Venus", text=VENUS_V2)],
            streams=path.streams,
        )  # fmt: skip
        started = time.monotonic()
        answer = await ask(
            redis, "Who mapped the clouds of Venus?", streams=path.streams, timeout=60,
            after=after_of(published),
        )  # fmt: skip
        waited = time.monotonic() - started
    assert answer.possibly_stale and answer.error is None
    assert cited(answer, "venus") == {1}  # what the index served then
    assert waited >= AFTER_WAIT_S * 0.9
    deadline = time.monotonic() + 60
    while await served_version(redis, path, "venus") != 2:  # leave the index caught up
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


def topic_text(topic: str, version: int) -> str:
    return (
        f"# {topic.title()} registry\n\nThe {topic} registry revision is number {version}. "
        f"The {topic} registry is kept by the {topic} office."
    )


@pytest.mark.timeout(300)
async def test_answers_never_cite_older_versions_than_after_under_concurrent_ingest(
    redis: Redis, path: RywPath
) -> None:
    """Writers publish new versions of three docs without pause while readers ask, each right
    after a publication, `after` the version just published: every answer that is not
    `possibly_stale` cites that version or a newer one."""
    streams = path.streams
    await index(
        redis, path,
        *(DocUpsert(doc_id=t, version=1, title=t, text=topic_text(t, 1)) for t in TOPICS),
    )  # fmt: skip
    latest = dict.fromkeys(TOPICS, 1)
    stop = asyncio.Event()

    async def write() -> None:
        version = 1
        while not stop.is_set():
            version += 1
            events = [
                DocUpsert(doc_id=t, version=version, title=t, text=topic_text(t, version))
                for t in TOPICS
            ]
            await publish_docs(redis, events, streams=streams)
            latest.update(dict.fromkeys(TOPICS, version))
            await asyncio.sleep(0.2)

    results: list[tuple[str, int, Answer]] = []

    async def read(topic: str) -> None:
        for _ in range(6):
            version = latest[topic] + 1
            event = DocUpsert(doc_id=topic, version=version, title=topic,
                              text=topic_text(topic, version))  # fmt: skip
            # a version of our own, just published: the index cannot serve it yet
            published = await publish_docs(redis, [event], streams=streams)
            latest[topic] = max(latest[topic], version)
            answer = await ask(
                redis, f"What is the {topic} registry revision number?", streams=streams,
                timeout=60, after=after_of(published),
            )  # fmt: skip
            results.append((topic, version, answer))

    writer = asyncio.create_task(write())
    try:
        await asyncio.gather(*(read(t) for t in TOPICS))
    finally:
        stop.set()
        await writer
    assert len(results) == 18
    fresh = [(t, v, a) for t, v, a in results if not a.possibly_stale]
    citing = 0
    for topic, version, answer in fresh:
        assert answer.error is None, answer.error
        versions = cited(answer, topic)
        assert not versions or min(versions) >= version, (topic, version, versions)
        citing += bool(versions)
    # A doc whose next version commits between a search's two reads (its rows, then its
    # fence) is left out of that one answer (shared/store/versioning.py): never shown older.
    assert len(fresh) >= len(results) // 2, "most reads got their version within the wait"
    assert citing >= len(fresh) // 2, "most answers cite the doc they were asked about"
