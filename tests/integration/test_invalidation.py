"""Answer invalidation end to end: all five stages as processes, a real Redis, a real index.
A subscribed client gets `answer.invalidated` when a doc its answer cited changes or is
deleted, and with `regenerate` a new answer that supersedes the old one."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ragstream.allinone import STAGES, Pipeline, running
from ragstream.ingest import publish_and_wait
from ragstream.redis_server import RedisServer
from shared import wire
from shared.answer_watch import RECORD_GRACE_MS, WatchKeys
from shared.client import ask, ask_and_watch
from shared.contracts import Answer, AnswerInvalidated, DocDelete, DocUpsert, Query
from shared.settings import StreamSettings
from tests.conftest import stream_env, unique_streams

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
SUBSCRIPTION_TTL_S = 600
PER_DOC = 3
WAIT_S = 60.0
"""Generous: how long a test waits for an event that must come."""


@dataclass
class WatchPath:
    pipeline: Pipeline
    streams: StreamSettings
    redis_url: str


@pytest.fixture(scope="module")
def path(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WatchPath]:
    streams = unique_streams()
    data_dir = tmp_path_factory.mktemp("invalidation")
    env = {
        **stream_env(streams),
        "RAG_STORE_LANCEDB_PATH": str(data_dir / "index"),
        "RAG_GENERATOR_SUBSCRIPTION_TTL_S": str(SUBSCRIPTION_TTL_S),
        "RAG_GENERATOR_MAX_SUBSCRIPTIONS_PER_DOC": str(PER_DOC),
    }
    with running(data_dir, redis_server.url, STAGES, env, streams) as pipeline:
        yield WatchPath(pipeline, streams, redis_server.url)


def moon_text(moon: str, discoverer: str) -> str:
    return f"# {moon}\n\nThe moon {moon} was discovered by {discoverer} from a mountain."


def upsert(doc_id: str, version: int, text: str) -> DocUpsert:
    return DocUpsert(doc_id=doc_id, version=version, title=doc_id, text=text)


async def index(redis: Redis, path: WatchPath, *events: DocUpsert | DocDelete) -> None:
    report = await publish_and_wait(redis, events, streams=path.streams, timeout_s=60)
    assert len(report.outcomes) == len(events), report.summary()


async def next_event(
    replies: AsyncGenerator[Answer | AnswerInvalidated, None],
) -> Answer | AnswerInvalidated:
    async with asyncio.timeout(WAIT_S):
        return await anext(replies)


async def test_update_and_delete_of_a_cited_doc_are_told_to_the_subscriber(
    redis: Redis, path: WatchPath
) -> None:
    doc = "moons/kessa"
    await index(redis, path, upsert(doc, 1, moon_text("Kessa", "Ada Brandt")))
    question = "Who discovered the moon Kessa?"
    replies = ask_and_watch(redis, question, streams=path.streams, timeout=60, watch_for=WAIT_S)
    async with contextlib.aclosing(replies):
        answer = await next_event(replies)
        assert isinstance(answer, Answer) and answer.error is None
        assert {(c.doc_id, c.version) for c in answer.citations} == {(doc, 1)}
        await index(redis, path, upsert(doc, 2, moon_text("Kessa", "Ola Fenn")))
        changed = await next_event(replies)
        assert isinstance(changed, AnswerInvalidated)
        assert (changed.query_id, changed.doc_id) == (answer.query_id, doc)
        assert (changed.old_version, changed.new_version, changed.deleted) == (1, 2, False)

    # a second subscriber, on v2; then the doc is deleted
    replies = ask_and_watch(redis, question, streams=path.streams, timeout=60, watch_for=WAIT_S)
    async with contextlib.aclosing(replies):
        answer = await next_event(replies)
        assert isinstance(answer, Answer)
        assert {(c.doc_id, c.version) for c in answer.citations} == {(doc, 2)}
        await index(redis, path, DocDelete(doc_id=doc, version=3))
        deleted = await next_event(replies)
        assert isinstance(deleted, AnswerInvalidated)
        assert (deleted.old_version, deleted.new_version, deleted.deleted) == (2, 3, True)


async def test_regenerate_answers_again_superseding_the_invalidated_answer(
    redis: Redis, path: WatchPath
) -> None:
    doc = "moons/talo"
    text = "# Talo\n\nThe moon Talo orbits once every {days} days."
    await index(redis, path, upsert(doc, 1, text.format(days=9)))
    replies = ask_and_watch(
        redis, "How many days does the moon Talo take to orbit?", streams=path.streams,
        timeout=60, watch_for=WAIT_S, regenerate=True,
    )  # fmt: skip
    async with contextlib.aclosing(replies):
        first = await next_event(replies)
        assert isinstance(first, Answer) and "9 days" in first.text
        assert first.supersedes is None
        await index(redis, path, upsert(doc, 2, text.format(days=41)))
        changed = await next_event(replies)
        assert isinstance(changed, AnswerInvalidated) and changed.new_version == 2
        second = await next_event(replies)
        assert isinstance(second, Answer)
        assert second.query_id == first.query_id and second.event_id != first.event_id
        assert second.supersedes == first.event_id
        assert {(c.doc_id, c.version) for c in second.citations} == {(doc, 2)}
        assert "41 days" in second.text
        # the new answer is watched in turn
        await index(redis, path, DocDelete(doc_id=doc, version=3))
        gone = await next_event(replies)
        assert isinstance(gone, AnswerInvalidated) and gone.deleted and gone.old_version == 2
        third = await next_event(replies)
        assert isinstance(third, Answer) and third.supersedes == second.event_id
        assert all(c.doc_id != doc for c in third.citations)


async def test_subscription_state_has_ttls_and_ends_with_the_client(
    redis: Redis, path: WatchPath
) -> None:
    doc = "moons/vell"
    await index(redis, path, upsert(doc, 1, moon_text("Vell", "Rui Tamm")))
    keys = WatchKeys(path.streams.indexed)
    plain = await ask(redis, "Who discovered the moon Vell?", streams=path.streams, timeout=60)
    assert plain.error is None and not await redis.exists(keys.answer(plain.query_id))
    replies = ask_and_watch(redis, "Who discovered the moon Vell?", streams=path.streams)
    async with contextlib.aclosing(replies):
        answer = await next_event(replies)
        assert isinstance(answer, Answer) and answer.citations
        record = keys.answer(answer.query_id)
        ttl_ms = SUBSCRIPTION_TTL_S * 1000
        assert ttl_ms < await redis.pttl(record) <= ttl_ms + RECORD_GRACE_MS
        assert 0 < await redis.pttl(keys.doc(doc)) <= ttl_ms
        assert await redis.hget(keys.doc(doc), answer.query_id) == b"1"
        assert await redis.zscore(keys.all, answer.query_id) is not None
    assert not await redis.exists(record)  # the client stopped listening: unsubscribed
    assert await redis.hget(keys.doc(doc), answer.query_id) is None
    assert await redis.zscore(keys.all, answer.query_id) is None


async def test_subscriptions_past_the_per_doc_bound_are_refused(
    redis: Redis, path: WatchPath
) -> None:
    doc = "moons/orla"
    await index(redis, path, upsert(doc, 1, moon_text("Orla", "Ivo Sand")))
    keys = WatchKeys(path.streams.indexed)
    refused_before = int(await redis.get(keys.refused) or 0)
    question = "Who discovered the moon Orla?"
    subscribers = [
        ask_and_watch(redis, question, streams=path.streams, timeout=60, watch_for=WAIT_S)
        for _ in range(PER_DOC + 1)
    ]
    try:
        answers = []
        for replies in subscribers:  # one after the other: the last one is over the bound
            answer = await next_event(replies)
            assert isinstance(answer, Answer) and (doc, 1) in {
                (c.doc_id, c.version) for c in answer.citations
            }
            answers.append(answer)
        assert int(await redis.get(keys.refused) or 0) == refused_before + 1
        assert len(await redis.hgetall(keys.doc(doc))) == PER_DOC
        await index(redis, path, upsert(doc, 2, moon_text("Orla", "Una Rask")))
        for replies in subscribers[:PER_DOC]:
            assert isinstance(await next_event(replies), AnswerInvalidated)
        # the refused one's invalidation would have been in the same commit as theirs
        last = subscribers[PER_DOC]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await anext(last)
    finally:
        for replies in subscribers:
            await replies.aclose()


def test_cli_ask_subscribe_prints_the_answer_then_the_invalidation(
    path: WatchPath, tmp_path: Path
) -> None:
    doc = "moons/pell"

    async def publish(version: int, discoverer: str) -> None:
        redis = Redis.from_url(path.redis_url)
        try:
            await index(redis, path, upsert(doc, version, moon_text("Pell", discoverer)))
        finally:
            await redis.aclose()

    asyncio.run(publish(1, "Mo Lind"))
    env = {**os.environ, **stream_env(path.streams), "RAG_REDIS_URL": path.redis_url}
    env["RAGSTREAM_DATA_DIR"] = str(tmp_path / "data")
    command = [
        sys.executable, "-m", "ragstream", "ask", "Who discovered the moon Pell?", "--json",
        "--subscribe", "--watch-for", "90", "--after", f"{doc}=1",
    ]  # fmt: skip
    # a child inherits an ignored SIGINT (a background job's): un-ignore it for the CLI
    ignoring = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        cli = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, ignoring)
    try:
        assert cli.stdout is not None
        first = Answer.model_validate_json(cli.stdout.readline())
        assert (doc, 1) in {(c.doc_id, c.version) for c in first.citations}
        assert not first.possibly_stale
        asyncio.run(publish(2, "Pia Kron"))
        changed = AnswerInvalidated.model_validate_json(cli.stdout.readline())
        assert (changed.query_id, changed.doc_id, changed.new_version) == (
            first.query_id,
            doc,
            2,
        )
    finally:
        cli.send_signal(signal.SIGINT)  # Ctrl-C: it stops listening
        code = cli.wait(timeout=30)
    assert code == 0  # Ctrl-C ends the watch: the subscription is dropped, the stream deleted

    async def reply_stream_left() -> int:
        redis = Redis.from_url(path.redis_url)
        try:
            for _, fields in wire.stream_entries(await redis.xrange(path.streams.queries)):
                query = Query.model_validate_json(wire.payload_of(fields))
                if query.query_id == first.query_id:
                    assert query.subscribe and query.after == {doc: 1}
                    return int(await redis.exists(query.reply_to or ""))
            raise AssertionError("the query was not published")
        finally:
            await redis.aclose()

    assert asyncio.run(reply_stream_left()) == 0  # deleted on the way out
