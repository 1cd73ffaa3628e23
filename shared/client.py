"""The client side of the query path: publish a query, wait for its answer by query id."""

import asyncio
import time
from collections.abc import Callable
from uuid import uuid4

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import tracing, wire
from shared.contracts import Answer, AnswerDelta, Query
from shared.contracts.answers import REPLY
from shared.settings import StreamSettings


async def ask(
    redis: Redis,
    text: str,
    *,
    timeout: float = 30.0,
    top_k_retrieve: int = 20,
    top_n: int = 5,
    filters: dict[str, str] | None = None,
    stream: bool = False,
    reply_to: str | None = None,
    streams: StreamSettings | None = None,
    on_delta: Callable[[AnswerDelta], None] | None = None,
) -> Answer:
    """Publish a query and return its Answer; streamed deltas go to `on_delta` as they arrive.

    Raises TimeoutError if no answer arrives in `timeout` seconds.
    """
    streams = streams or StreamSettings()
    query = Query(
        query_id=uuid4().hex,
        text=text,
        top_k_retrieve=top_k_retrieve,
        top_n=top_n,
        filters=filters,
        reply_to=reply_to,
        stream=stream,
    )
    return await send_and_wait(redis, query, timeout=timeout, streams=streams, on_delta=on_delta)


async def send_and_wait(
    redis: Redis,
    query: Query,
    *,
    timeout: float,
    streams: StreamSettings,
    on_delta: Callable[[AnswerDelta], None] | None = None,
) -> Answer:
    with tracing.client_span("ask", query_id=query.query_id):
        return await _send_and_wait(redis, query, timeout, streams, on_delta)


async def _send_and_wait(
    redis: Redis,
    query: Query,
    timeout: float,
    streams: StreamSettings,
    on_delta: Callable[[AnswerDelta], None] | None,
) -> Answer:
    reply = query.reply_to or streams.answers
    cursor = await wire.last_entry_id(redis, reply)
    entry = wire.encode(query)
    tracing.inject(entry)
    await redis.xadd(streams.queries, entry)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            response = await redis.xread({reply: cursor}, block=max(1, int(min(left, 1) * 1000)))
        except (RedisConnectionError, RedisTimeoutError):
            # Redis restarting: keep the cursor and wait on, so no answer is missed.
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            continue
        for _, entries in wire.read_entries(response):
            for entry_id, fields in entries:
                cursor = entry_id
                payload = wire.payload_of(fields)
                if query.query_id.encode() not in payload:
                    continue
                reply_event = REPLY.validate_json(payload)
                if reply_event.query_id != query.query_id:
                    continue
                if isinstance(reply_event, Answer):
                    return reply_event
                if isinstance(reply_event, AnswerDelta) and on_delta is not None:
                    on_delta(reply_event)
    raise TimeoutError(f"no answer to query {query.query_id} within {timeout:.1f} s")
