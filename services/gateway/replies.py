"""The gateway's own reply stream: one reader per replica routes answers to the requests waiting
for them, by query id, so no request reads (or parses) another client's answers.

The stream (`<answers>.gw.<uuid>`) is named in every query's `reply_to`. Each batch read renews
its expiry and trims what was read (no other reader exists), so an idle or crashed replica's
stream disappears by itself; a clean shutdown deletes it.
"""

import asyncio
import contextlib
from types import TracebackType

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import wire
from shared.contracts import Answer, AnswerDelta, AnswerInvalidated
from shared.contracts.answers import REPLY
from shared.logging import get_logger

READ_BLOCK_MS = 1000
READ_COUNT = 100
RETRY_S = 1.0
log = get_logger("ragstream.gateway.replies")


class Inbox:
    """The replies (deltas, then the answer) of one query, in stream order."""

    def __init__(self, router: "ReplyRouter", query_id: str) -> None:
        self.query_id = query_id
        self.queue: asyncio.Queue[Answer | AnswerDelta] = asyncio.Queue()
        self._router = router

    async def next(self) -> Answer | AnswerDelta:
        """The next reply (callers bound the wait with `asyncio.timeout`)."""
        return await self.queue.get()

    def close(self) -> None:
        self._router.release(self.query_id)

    def __enter__(self) -> "Inbox":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class ReplyRouter:
    def __init__(self, redis: Redis, stream: str, idle_ttl_s: int) -> None:
        self.redis = redis
        self.stream = stream
        self.idle_ttl_s = idle_ttl_s
        self._inboxes: dict[str, Inbox] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def open(self, query_id: str) -> Inbox:
        """Register before publishing the query, so that no reply can be missed."""
        inbox = Inbox(self, query_id)
        self._inboxes[query_id] = inbox
        return inbox

    def release(self, query_id: str) -> None:
        self._inboxes.pop(query_id, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._read_forever(), name="gateway-replies")

    async def stop(self) -> None:
        """Stop reading and delete the stream (replies still in flight are not wanted now)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.redis.delete(self.stream)
        except RedisError as exc:
            log.warning("reply stream not deleted", stream=self.stream, reason=type(exc).__name__)

    async def _read_forever(self) -> None:
        cursor = b"0-0"  # the stream is this replica's: every entry in it is a reply to us
        while True:
            try:
                cursor = await self._read_once(cursor)
            except RedisError as exc:
                log.warning("reading replies failed", reason=type(exc).__name__)
                await asyncio.sleep(RETRY_S)

    async def _read_once(self, cursor: bytes) -> bytes:
        response = await self.redis.xread(
            {self.stream: cursor}, count=READ_COUNT, block=READ_BLOCK_MS
        )
        entries = [entry for _, batch in wire.read_entries(response) for entry in batch]
        if not entries:
            return cursor
        for _, fields in entries:
            self._route(wire.payload_of(fields))
        cursor = entries[-1][0]
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.expire(self.stream, self.idle_ttl_s)
            pipe.xtrim(self.stream, minid=cursor, approximate=True)
            await pipe.execute()
        return cursor

    def _route(self, payload: bytes) -> None:
        try:
            reply = REPLY.validate_json(payload)
        except ValidationError:
            log.warning("unreadable reply skipped", bytes=len(payload))
            return
        if isinstance(reply, AnswerInvalidated):
            return  # the gateway answers once per request; it does not subscribe
        inbox = self._inboxes.get(reply.query_id)
        if inbox is not None:
            inbox.queue.put_nowait(reply)
