"""`ragstream watch DIR`: keep the index in step with a folder as files are saved.

A full sync first (what changed while nobody watched), then one sync per debounced batch of
file-system changes, scoped to the paths they touch. A rename is a delete of the old doc id and
an upsert of the new one. Same state file and publishing code as `ragstream ingest DIR --sync`.
"""

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TypeVar

from redis.asyncio import Redis
from watchfiles import Change, DefaultFilter, awatch

from ragstream.output import Output
from ragstream.sync import SyncResult, SyncState, sync
from shared.contracts import DocUpsert
from shared.settings import StreamSettings

DEBOUNCE_MS = 100
"""Quiet time after a change before the batch is synced (an editor's save is several events)."""
MAX_BATCH_MS = 1_600
T = TypeVar("T")


def tell_changes(say: Output, result: SyncResult, timeout_s: float) -> None:
    """One line (or JSON event) per doc change: indexed, deleted, stale, dead-lettered, lost."""
    letters = {(d.doc_id, d.version): d.reason for d in result.report.dead_letters}
    for event in result.plan.events:
        change = "upsert" if isinstance(event, DocUpsert) else "delete"
        key = (event.doc_id, event.version)
        outcome = result.report.outcomes.get(key)
        fields = {"doc_id": event.doc_id, "version": event.version, "change": change}
        name = f"{event.doc_id} (v{event.version})"
        if outcome == "indexed":
            say.ok("doc indexed", f"indexed {name}", outcome=outcome, **fields)
        elif outcome == "unchanged":
            text = f"{name}: content unchanged, the index serves it as this version"
            say.ok("doc unchanged", text, outcome=outcome, **fields)
        elif outcome == "deleted":
            say.ok("doc deleted", f"deleted {name}", outcome=outcome, **fields)
        elif outcome == "stale":
            text = f"{name} is stale: the index holds a newer version"
            say.warn("doc stale", text, outcome=outcome, **fields)
        elif outcome == "dead_lettered":
            reason = letters.get(key, "")
            text = f"dead-lettered {name}: {reason}"
            say.warn("dead-lettered", text, outcome=outcome, reason=reason, **fields)
        else:
            text = f"{change} of {name} not acknowledged within {timeout_s:g} s; retried later"
            say.warn("doc not acknowledged", text, timeout_s=timeout_s, **fields)
    for doc_id, why in sorted(result.skipped.items()):
        say.warn("doc skipped", f"skipped {doc_id}: {why}", doc_id=doc_id, reason=why)


async def until_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """`work`'s result, or None if `stop` is set first (then `work` is cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def watch(
    redis: Redis,
    folder: Path,
    state: SyncState,
    *,
    on_result: Callable[[SyncResult], None],
    stop: asyncio.Event,
    streams: StreamSettings | None = None,
    timeout_s: float = 60.0,
    debounce_ms: int = DEBOUNCE_MS,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Sync `folder` now, then on every batch of changes, until `stop` is set."""
    changes = awatch(
        folder, watch_filter=DefaultFilter(), step=debounce_ms,
        debounce=max(MAX_BATCH_MS, debounce_ms), stop_event=stop,
    )  # fmt: skip

    async def synced(changed: Iterable[Path] | None) -> None:
        result = await until_stopped(
            sync(redis, folder, state, changed=changed, streams=streams, timeout_s=timeout_s), stop
        )
        if result is not None and (result.plan.events or result.skipped):
            on_result(result)

    async def next_batch() -> set[tuple[Change, str]] | None:
        with contextlib.suppress(StopAsyncIteration):
            return await anext(changes)
        return None

    pending = asyncio.ensure_future(next_batch())
    try:
        for _ in range(3):  # let the watcher start before the first scan: no change is missed
            await asyncio.sleep(0)
        await synced(None)
        if on_ready is not None:
            on_ready()
        while not stop.is_set():
            batch = await pending
            if batch is None:
                break
            pending = asyncio.ensure_future(next_batch())
            await synced(Path(path) for _, path in batch)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await pending
        await changes.aclose()


def stop_on_signals(stop: asyncio.Event) -> None:
    """Ctrl-C (and SIGTERM) set `stop`: the watch ends after the current step, exit code 0."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


__all__ = ["DEBOUNCE_MS", "stop_on_signals", "tell_changes", "until_stopped", "watch"]
