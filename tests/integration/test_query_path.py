"""The query path end to end: all five stages as processes, a real Redis, a real index."""

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from ragstream.allinone import STAGES, Pipeline, running
from ragstream.ingest import publish_and_wait
from ragstream.redis_server import RedisServer
from shared import wire
from shared.client import ask, send_and_wait
from shared.contracts import Answer, AnswerDelta, DeadLetter, DocDelete, DocUpsert, Query
from shared.settings import StreamSettings
from tests.conftest import stream_env, unique_streams

pytestmark = pytest.mark.integration

MARS = (
    "# Mars\n\nMars is the fourth planet from the Sun.\n\n## Moons\n\n"
    "Mars has two small moons, Phobos and Deimos. Both were discovered by Asaph Hall in 1877."
)
MARS_V2 = (
    "# Mars\n\nMars is the fourth planet from the Sun.\n\n## Moons\n\n"
    "Mars has two small moons. They were first catalogued by the observer Wilhelmina Quist."
)
OTHERS = {
    "webb": "# James Webb\n\nThe James Webb Space Telescope launched on 25 December 2021.",
    "saturn": "# Saturn\n\nTitan is Saturn's largest moon and has a dense atmosphere.",
}


@dataclass
class QueryPath:
    pipeline: Pipeline
    streams: StreamSettings


@pytest.fixture(scope="module")
def query_path(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QueryPath]:
    streams = unique_streams()
    data_dir = tmp_path_factory.mktemp("query")
    env = {**stream_env(streams), "RAG_STORE_LANCEDB_PATH": str(data_dir / "index")}
    with running(data_dir, redis_server.url, STAGES, env, streams) as pipeline:
        yield QueryPath(pipeline, streams)


async def index(redis: Redis, path: QueryPath, *events: DocUpsert | DocDelete) -> None:
    report = await publish_and_wait(redis, events, streams=path.streams, timeout_s=60)
    assert len(report.outcomes) == len(events), report.summary()


@pytest.fixture
async def corpus(redis: Redis, query_path: QueryPath) -> None:
    await index(
        redis,
        query_path,
        DocUpsert(doc_id="mars", version=1, title="Mars", text=MARS),
        *(DocUpsert(doc_id=d, version=1, title=d, text=t) for d, t in OTHERS.items()),
    )


async def test_answer_cites_the_right_doc(
    redis: Redis, query_path: QueryPath, corpus: None
) -> None:
    answer = await ask(redis, "Who discovered the moons of Mars?", streams=query_path.streams)
    assert answer.error is None and not answer.abstained
    assert "Asaph Hall" in answer.text
    assert answer.citations and answer.citations[0].doc_id == "mars"
    assert all(f"[{c.marker}]" in answer.text for c in answer.citations)
    timings = answer.timings
    assert timings.retrieve_ms and timings.generate_ms is not None and timings.total_ms


async def test_update_is_answered_from_new_version_and_delete_abstains(
    redis: Redis, query_path: QueryPath, corpus: None
) -> None:
    await index(redis, query_path, DocUpsert(doc_id="mars", version=2, title="Mars", text=MARS_V2))
    answer = await ask(redis, "Who catalogued the moons of Mars?", streams=query_path.streams)
    assert "Wilhelmina Quist" in answer.text
    assert "Asaph Hall" not in answer.text
    assert {(c.doc_id, c.version) for c in answer.citations if c.doc_id == "mars"} == {("mars", 2)}

    await index(redis, query_path, DocDelete(doc_id="mars", version=3))
    answer = await ask(redis, "Who is Wilhelmina Quist?", streams=query_path.streams)
    assert answer.abstained
    assert all(c.doc_id != "mars" for c in answer.citations)


async def test_streamed_answer_deltas_precede_the_answer(
    redis: Redis, query_path: QueryPath, corpus: None
) -> None:
    deltas: list[AnswerDelta] = []
    answer = await ask(
        redis, "When did the James Webb Space Telescope launch?", stream=True,
        streams=query_path.streams, on_delta=deltas.append,
    )  # fmt: skip
    assert deltas and [d.seq for d in deltas] == list(range(len(deltas)))
    assert "".join(d.text for d in deltas) == answer.text
    assert "25 December 2021" in answer.text


async def test_reply_to_stream_under_answers_is_honoured(
    redis: Redis, query_path: QueryPath, corpus: None
) -> None:
    reply = f"{query_path.streams.answers}.client-7"
    answer = await ask(redis, "What is Titan?", reply_to=reply, streams=query_path.streams)
    assert answer.citations and answer.citations[0].doc_id == "saturn"
    assert await redis.xlen(reply) >= 1


async def test_bad_queries_get_error_answers_and_dead_letters(
    redis: Redis, query_path: QueryPath
) -> None:
    streams = query_path.streams
    start = (await redis.xrevrange(streams.dlq, count=1) or [(b"0-0", {})])[0][0]

    raw_bad = {
        "empty": b'{"type": "query", "query_id": "q-empty", "text": "   "}',
        "too long": Query.model_construct(query_id="q-long", text="x" * 5000)
        .model_dump_json()
        .encode(),
        "malformed": b'{"type": "query", "query_id": "q-bad", "text": ',
    }
    for payload in raw_bad.values():
        await redis.xadd(streams.queries, {b"event": payload})
    hijack = Query(query_id="q-hijack", text="Mars?", reply_to=streams.docs)
    await redis.xadd(streams.queries, wire.encode(hijack))

    answers: dict[str, Answer] = {}
    for _ in range(100):
        for _, fields in await redis.xrange(streams.answers):
            event = (
                Answer.model_validate_json(fields[b"event"])
                if b'"answer"' in fields[b"event"]
                else None
            )
            if event is not None and event.query_id in {"q-empty", "q-long", "q-hijack"}:
                answers[event.query_id] = event
        if len(answers) == 3:
            break
        await asyncio.sleep(0.1)
    assert set(answers) == {"q-empty", "q-long", "q-hijack"}
    assert "query text is empty" in (answers["q-empty"].error or "")
    assert "at most 4000 characters" in (answers["q-long"].error or "")
    assert "reply_to must be" in (answers["q-hijack"].error or "")
    assert await redis.xlen(streams.docs) == 0 or all(
        b"q-hijack" not in f.get(b"event", b"") for _, f in await redis.xrange(streams.docs)
    )

    letters = [
        DeadLetter.model_validate_json(f[b"event"])
        for _, f in await redis.xrange(streams.dlq, min=f"({start.decode()}")
    ]
    assert len(letters) == 4
    assert {letter.stage for letter in letters} == {"retriever"}
    assert any("malformed JSON" in letter.reason for letter in letters)
    # the pipeline keeps answering
    ok = await send_and_wait(
        redis, Query(query_id="q-after", text="What is Titan?"), timeout=30, streams=streams
    )
    assert ok.error is None


async def test_unknown_filter_key_gets_one_error_answer_and_a_dead_letter_at_once(
    redis: Redis, query_path: QueryPath, corpus: None
) -> None:
    streams = query_path.streams
    start = (await redis.xrevrange(streams.dlq, count=1) or [(b"0-0", {})])[0][0]
    query = Query(query_id="q-filter", text="Mars?", filters={"language": "en"})

    answer = await send_and_wait(redis, query, timeout=30, streams=streams)

    assert answer.error is not None and "cannot filter on ['language']" in answer.error
    letters = [
        DeadLetter.model_validate_json(f[b"event"])
        for _, f in await redis.xrange(streams.dlq, min=f"({start.decode()}")
    ]
    assert [(letter.query_id, letter.deliveries) for letter in letters] == [("q-filter", 1)]
    await asyncio.sleep(0.5)  # no second answer follows (it is not redelivered)
    found = [f for _, f in await redis.xrange(streams.answers) if b"q-filter" in f[b"event"]]
    assert len(found) == 1


async def test_query_past_its_deadline_gets_a_deadline_error(
    redis: Redis, query_path: QueryPath, corpus: None
) -> None:
    late = Query(
        query_id="q-late", text="What is Titan?", deadline=datetime.now(UTC) - timedelta(seconds=1)
    )
    answer = await send_and_wait(redis, late, timeout=30, streams=query_path.streams)
    assert answer.abstained and not answer.citations
    assert (answer.error or "").startswith("deadline exceeded at the retriever")
    # ask() gives its queries a deadline (now + timeout); in time, they are answered as usual.
    ok = await ask(redis, "What is Titan?", timeout=30, streams=query_path.streams)
    assert ok.error is None and ok.citations
