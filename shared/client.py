"""The client side of the query path: publish a query, wait for its answer by query id.

By default a client reads its replies on a stream of its own (`<answers>.c.<uuid>`, see
`shared.replies.own_reply_stream`): it reads only its own replies, and deletes the stream when
done (the generator sets an idle expiry on it, for clients that die first). Pass `reply_to` to
use a stream you manage instead (then it is neither read from its start nor deleted).
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from uuid import uuid4

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import answer_watch, tracing, wire
from shared.contracts import Answer, AnswerDelta, AnswerInvalidated, Query
from shared.contracts.answers import REPLY
from shared.deadlines import deadline_after
from shared.errors import REDIS_DOWN
from shared.replies import own_reply_stream
from shared.settings import StreamSettings

Reply = Answer | AnswerDelta | AnswerInvalidated


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
    after: Mapping[str, int] | None = None,
) -> Answer:
    """Publish a query and return its Answer; streamed deltas go to `on_delta` as they arrive.

    The query's `deadline` is now + `timeout`: stages do not work on it past that. With `after`
    ({doc_id: version}, e.g. what `ragstream.ingest.publish_docs` returned) the answer is read
    from an index that serves at least those versions, or says `possibly_stale`. Raises
    TimeoutError if no answer arrives in `timeout` seconds.
    """
    streams = streams or StreamSettings()
    target = reply_to or own_reply_stream(streams)
    query = Query(
        query_id=uuid4().hex,
        text=text,
        top_k_retrieve=top_k_retrieve,
        top_n=top_n,
        filters=filters,
        reply_to=target,
        stream=stream,
        deadline=deadline_after(timeout),
        after=dict(after) if after else None,
    )
    try:
        return await send_and_wait(
            redis, query, timeout=timeout, streams=streams, on_delta=on_delta
        )
    finally:
        if reply_to is None:
            await _delete(redis, target)


async def ask_and_watch(
    redis: Redis,
    text: str,
    *,
    watch_for: float | None = None,
    regenerate: bool = False,
    timeout: float = 30.0,
    top_k_retrieve: int = 20,
    top_n: int = 5,
    filters: dict[str, str] | None = None,
    stream: bool = False,
    streams: StreamSettings | None = None,
    on_delta: Callable[[AnswerDelta], None] | None = None,
    after: Mapping[str, int] | None = None,
    stop: asyncio.Event | None = None,
) -> AsyncGenerator[Answer | AnswerInvalidated, None]:
    """Ask with `subscribe`: yield the Answer, then an `AnswerInvalidated` each time a doc it
    cited changes or is deleted, and with `regenerate` each new Answer (its `supersedes` names
    the Answer it replaces), until `watch_for` seconds after the first Answer (None: until the
    caller stops) or `stop` is set. Close it (`contextlib.aclosing`) to end the subscription
    and delete the reply stream at once. Raises TimeoutError if the first Answer takes longer
    than `timeout`.
    """
    streams = streams or StreamSettings()
    query = Query(
        query_id=uuid4().hex,
        text=text,
        top_k_retrieve=top_k_retrieve,
        top_n=top_n,
        filters=filters,
        reply_to=own_reply_stream(streams),
        stream=stream,
        deadline=deadline_after(timeout),
        after=dict(after) if after else None,
        subscribe=True,
        regenerate=regenerate,
    )
    reply = query.reply_to or streams.answers
    reader = _Reader(redis, query, reply, b"0-0")
    try:
        await _publish(redis, query, streams)
        async for event in reader.replies(time.monotonic() + timeout):
            if isinstance(event, AnswerDelta):
                if on_delta is not None:
                    on_delta(event)
                continue
            yield event
            if isinstance(event, Answer):
                break
        else:
            raise TimeoutError(f"no answer to query {query.query_id} within {timeout:.1f} s")
        async for event in reader.replies(
            None if watch_for is None else time.monotonic() + watch_for, stop
        ):
            if not isinstance(event, AnswerDelta):
                yield event
    finally:
        with contextlib.suppress(RedisError):
            await answer_watch.unwatch(
                redis, answer_watch.WatchKeys(streams.indexed), query.query_id
            )
        await _delete(redis, reply)


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
    reader = _Reader(redis, query, reply, await wire.last_entry_id(redis, reply))
    await _publish(redis, query, streams)
    async for event in reader.replies(time.monotonic() + timeout):
        if isinstance(event, Answer):
            return event
        if isinstance(event, AnswerDelta) and on_delta is not None:
            on_delta(event)
    raise TimeoutError(f"no answer to query {query.query_id} within {timeout:.1f} s")


async def _publish(redis: Redis, query: Query, streams: StreamSettings) -> None:
    entry = wire.encode(query)
    tracing.inject(entry)
    await redis.xadd(streams.queries, entry)


class _Reader:
    """Reads one query's replies from a reply stream, from a cursor on."""

    def __init__(self, redis: Redis, query: Query, stream: str, cursor: bytes) -> None:
        self.redis, self.query, self.stream, self.cursor = redis, query, stream, cursor

    async def replies(
        self, until: float | None, stop: asyncio.Event | None = None
    ) -> AsyncIterator[Reply]:
        """The query's replies as they come, until the monotonic time `until` (None: ever) or
        `stop` is set (checked at least once a second)."""
        query_id = self.query.query_id
        while until is None or (left := until - time.monotonic()) > 0:
            if stop is not None and stop.is_set():
                return
            block_ms = 1000 if until is None else max(1, int(min(left, 1) * 1000))
            try:
                response = await self.redis.xread({self.stream: self.cursor}, block=block_ms)
            except REDIS_DOWN:
                if _cancelling():  # a cancel (Ctrl-C) that redis-py's own timeout turned into
                    raise asyncio.CancelledError from None  # a TimeoutError: stop, don't retry
                # Redis restarting: keep the cursor and wait on, so no reply is missed.
                await asyncio.sleep(0.5 if until is None else min(0.5, max(0.0, left)))
                continue
            for _, entries in wire.read_entries(response):
                for entry_id, fields in entries:
                    self.cursor = entry_id
                    payload = wire.payload_of(fields)
                    if query_id.encode() not in payload:
                        continue
                    event = REPLY.validate_json(payload)
                    if event.query_id == query_id:
                        yield event


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _delete(redis: Redis, stream: str) -> None:
    """Delete a reply stream of our own (best effort: it expires anyway)."""
    with contextlib.suppress(RedisError):
        await redis.delete(stream)
