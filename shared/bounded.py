"""Handling the events of one batch concurrently, at most `limit` at a time."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def map_bounded(work: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int) -> list[R]:
    """`work(item)` for every item, at most `limit` running at once, started in order; the
    results in the items' order.

    The first exception cancels the work still running or waiting and is raised as is (not as
    an ExceptionGroup), so a `TransientError` of one search still fails the batch as the
    runtime expects. `limit=1` is the sequential loop.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if len(items) <= 1 or limit == 1:
        return [await work(item) for item in items]
    gate = asyncio.Semaphore(limit)

    async def one(item: T) -> R:
        async with gate:
            return await work(item)

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
