"""How the gateway waits for answers, with the test playing the pipeline: it reads the published
Query and writes replies to its `reply_to`. In-process gateway over real HTTP, real Redis."""

import asyncio
import time

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from shared import tracing, wire
from shared.contracts import Answer, AnswerDelta, Query
from shared.settings import StreamSettings
from tests.gateway.conftest import make_app, serving, sse_events


async def queries(redis: Redis, streams: StreamSettings, n: int) -> list[Query]:
    """The first `n` queries published (fails after 10 s)."""
    for _ in range(100):
        entries = await redis.xrange(streams.queries)
        if len(entries) >= n:
            return [Query.model_validate_json(f[b"event"]) for _, f in entries[:n]]
        await asyncio.sleep(0.1)
    pytest.fail(f"fewer than {n} queries published")


async def reply(redis: Redis, query: Query, event: Answer | AnswerDelta) -> None:
    assert query.reply_to is not None
    await redis.xadd(query.reply_to, wire.encode(event))


async def test_concurrent_queries_get_their_own_answers(
    redis_server: RedisServer, redis: Redis, streams: StreamSettings
) -> None:
    async with (
        serving(make_app(redis_server.url, streams)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        first = asyncio.create_task(http.post("/v1/query", json={"text": "one?", "top_n": 2}))
        second = asyncio.create_task(
            http.post("/v1/query", json={"text": "two?", "filters": {"source": "wiki"}})
        )
        published = await queries(redis, streams, 2)
        by_text = {q.text: q for q in published}
        q1, q2 = by_text["one?"], by_text["two?"]
        assert q1.reply_to == q2.reply_to and q1.reply_to.startswith(f"{streams.answers}.gw.")
        assert (q1.top_n, q1.top_k_retrieve, q1.filters, q1.stream) == (2, 20, None, False)
        assert q2.filters == {"source": "wiki"}

        await reply(redis, q1, Answer(query_id="someone-else", text="not yours"))
        await reply(redis, q2, Answer(query_id=q2.query_id, text="answer two"))
        await reply(redis, q1, Answer(query_id=q1.query_id, text="answer one"))
        one, two = await first, await second
    assert one.status_code == two.status_code == 200
    assert (one.json()["text"], two.json()["text"]) == ("answer one", "answer two")
    assert one.json()["query_id"] == q1.query_id
    assert not await redis.exists(q1.reply_to), "the reply stream outlived the gateway"


async def test_reply_stream_expires_when_idle(
    redis_server: RedisServer, redis: Redis, streams: StreamSettings
) -> None:
    app = make_app(redis_server.url, streams, reply_idle_ttl_s=40)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        pending = asyncio.create_task(http.post("/v1/query", json={"text": "ttl?"}))
        (query,) = await queries(redis, streams, 1)
        assert query.reply_to is not None
        await reply(redis, query, Answer(query_id=query.query_id, text="ok"))
        assert (await pending).status_code == 200
        assert 0 < await redis.ttl(query.reply_to) <= 40


async def test_unanswered_queries_are_504(
    redis_server: RedisServer, streams: StreamSettings
) -> None:
    app = make_app(redis_server.url, streams, max_query_timeout_s=0.5)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        for body in ({"text": "q", "timeout_s": 0.2}, {"text": "q", "stream": True}):
            started = time.monotonic()
            response = await http.post("/v1/query", json=body)
            assert time.monotonic() - started < 5  # the client's 0.2 s, or capped at 0.5 s
            assert response.status_code == 504
            assert response.headers["content-type"] == "application/json"
            error = response.json()
            assert error["error"] == "gateway_timeout"
            assert "no answer to query" in error["message"]


async def test_stream_that_stalls_ends_with_an_error_event(
    redis_server: RedisServer, redis: Redis, streams: StreamSettings
) -> None:
    app = make_app(redis_server.url, streams, sse_ping_s=0.2)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        body = {"text": "slow?", "stream": True, "timeout_s": 1.5}
        pending = asyncio.create_task(http.post("/v1/query", json=body))
        (query,) = await queries(redis, streams, 1)
        await reply(redis, query, AnswerDelta(query_id=query.query_id, seq=0, text="Half an"))
        response = await pending
    assert response.status_code == 200
    assert ": ping" in response.text
    events = sse_events(response.text)
    assert [kind for kind, _ in events] == ["delta", "error"]
    assert "gateway_timeout" in events[1][1]


async def test_publishes_carry_the_trace_context(
    redis_server: RedisServer, redis: Redis, streams: StreamSettings
) -> None:
    tracing.use_provider(TracerProvider())
    try:
        app = make_app(redis_server.url, streams)
        async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
            await http.post("/v1/documents", json={"doc_id": "d", "text": "x"})
            await http.post("/v1/query", json={"text": "q", "timeout_s": 0.1})
    finally:
        tracing.use_provider(None)
    for stream in (streams.docs, streams.queries):
        ((_, fields),) = await redis.xrange(stream)
        assert fields[b"traceparent"].startswith(b"00-"), stream
