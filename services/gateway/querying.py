"""Queries over HTTP: publish a `Query` whose `reply_to` is the replica's reply stream, then
wait for its Answer, or relay its deltas and Answer as Server-Sent Events."""

import asyncio
import time
from collections.abc import AsyncIterator
from uuid import uuid4

from fastapi.sse import KEEPALIVE_COMMENT, format_sse_event

from services.gateway.models import ErrorResponse, QueryRequest
from services.gateway.publishing import publish
from services.gateway.replies import Inbox, ReplyRouter
from shared.contracts import Answer, AnswerDelta, Query
from shared.deadlines import deadline_after
from shared.settings import StreamSettings


def new_query(request: QueryRequest, reply_to: str, timeout_s: float) -> Query:
    """The request's Query; its `deadline` is when the gateway stops waiting (now +
    `timeout_s`), so no stage works on it after that."""
    return Query(
        query_id=uuid4().hex,
        text=request.text,
        top_k_retrieve=request.top_k_retrieve,
        top_n=request.top_n,
        filters=request.filters,
        stream=request.stream,
        reply_to=reply_to,
        deadline=deadline_after(timeout_s),
        after=request.after,
    )


def timeout_message(query: Query, timeout_s: float) -> str:
    return f"no answer to query {query.query_id} within {timeout_s:g} s"


async def _send(query: Query, router: ReplyRouter, streams: StreamSettings) -> Inbox:
    inbox = router.open(query.query_id)
    try:
        await publish(
            router.redis, streams.queries, query,
            maxlen=streams.maxlen, span="gateway query", query_id=query.query_id,
        )  # fmt: skip
    except BaseException:
        inbox.close()
        raise
    return inbox


async def ask(
    query: Query, router: ReplyRouter, streams: StreamSettings, timeout_s: float
) -> Answer:
    """The query's Answer; TimeoutError if it takes longer than `timeout_s`."""
    with await _send(query, router, streams) as inbox:
        async with asyncio.timeout(timeout_s):
            while True:
                reply = await inbox.next()
                if isinstance(reply, Answer):
                    return reply


async def ask_streaming(
    query: Query, router: ReplyRouter, streams: StreamSettings, timeout_s: float, ping_s: float
) -> AsyncIterator[bytes]:
    """An SSE body, once the first reply is in (TimeoutError before: nothing was sent yet, so
    the client gets a plain 504)."""
    deadline = time.monotonic() + timeout_s
    inbox = await _send(query, router, streams)
    try:
        async with asyncio.timeout(timeout_s):
            first = await inbox.next()
    except BaseException:
        inbox.close()
        raise
    return _events(inbox, first, deadline, ping_s, timeout_message(query, timeout_s))


async def _events(
    inbox: Inbox, first: Answer | AnswerDelta, deadline: float, ping_s: float, late: str
) -> AsyncIterator[bytes]:
    """`delta` events, then the `answer` event; keep-alive comments while waiting; an `error`
    event if the answer is not complete by the deadline."""
    with inbox:
        reply: Answer | AnswerDelta | None = first
        while True:
            if reply is not None:
                yield sse_event(reply)
                if isinstance(reply, Answer):
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                error = ErrorResponse(error="gateway_timeout", message=late)
                yield format_sse_event(event="error", data_str=error.model_dump_json())
                return
            try:
                async with asyncio.timeout(min(left, ping_s)):
                    reply = await inbox.next()
            except TimeoutError:
                reply = None
                if time.monotonic() < deadline:
                    yield KEEPALIVE_COMMENT


def sse_event(reply: Answer | AnswerDelta) -> bytes:
    kind = "answer" if isinstance(reply, Answer) else "delta"
    return format_sse_event(event=kind, data_str=reply.model_dump_json())
