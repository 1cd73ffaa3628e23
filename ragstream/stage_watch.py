"""Noticing, while the CLI waits on the pipeline, that a stage it needs is not running.

A stage is running when a consumer of its group announces itself on its input stream
(`shared.readiness`); one missing for a few seconds is reported once, and the wait goes on.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.readiness import ready_consumers

ABSENT_AFTER_S = 3.0
POLL_S = 1.0
Reader = tuple[str, str]
"""(stage, the stream it reads): the stage's consumer group is named after it."""


async def watch_readers(
    redis: Redis,
    readers: Sequence[Reader],
    on_absent: Callable[[str, str], None],
    *,
    absent_after_s: float = ABSENT_AFTER_S,
    poll_s: float = POLL_S,
    stop: asyncio.Event | None = None,
) -> None:
    """Call `on_absent(stage, stream)` once for each reader that has had no live consumer for
    `absent_after_s`; returns when every one was reported, or `stop` is set. Redis failing is
    not absence."""
    stop = stop or asyncio.Event()
    missing_since: dict[Reader, float] = {}
    pending = list(readers)
    while pending and not stop.is_set():
        for reader in list(pending):
            try:
                live = await ready_consumers(redis, reader[1], reader[0])
            except RedisError:
                missing_since.clear()
                break
            now = time.monotonic()
            if live:
                missing_since.pop(reader, None)
            elif now - missing_since.setdefault(reader, now) >= absent_after_s:
                pending.remove(reader)
                on_absent(*reader)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), poll_s)


@asynccontextmanager
async def watching(
    redis: Redis,
    readers: Sequence[Reader],
    on_absent: Callable[[str, str], None],
    *,
    absent_after_s: float = ABSENT_AFTER_S,
) -> AsyncIterator[list[str]]:
    """`watch_readers` in the background while the block runs; yields the stages found absent."""
    absent: list[str] = []

    def record(stage: str, stream: str) -> None:
        absent.append(stage)
        on_absent(stage, stream)

    stop = asyncio.Event()
    task = asyncio.create_task(
        watch_readers(redis, readers, record, absent_after_s=absent_after_s, stop=stop)
    )
    try:
        yield absent
    finally:
        # A stop flag, not only a cancel: a cancel landing inside a redis-py call can be
        # swallowed there, and awaiting the task would then hang.
        stop.set()
        _, late = await asyncio.wait({task}, timeout=2 * POLL_S)
        for straggler in late:
            straggler.cancel()
