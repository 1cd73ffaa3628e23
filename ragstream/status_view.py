"""How `ragstream status` looks: a table for people, JSON for machines, refreshed with --watch."""

import asyncio

import structlog
from redis.asyncio import Redis
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ragstream.status import GroupStatus, Status, gather
from shared.errors import REDIS_DOWN
from shared.settings import StreamSettings

log = structlog.get_logger("ragstream.cli")


def render(status: Status) -> RenderableType:
    table = Table(
        "stream", "length", "group", "lag", "pending", "oldest pending", "consumers",
        title=f"ragstream status · {status.taken_at:%H:%M:%S} UTC", title_justify="left",
    )  # fmt: skip
    for stream in status.streams:
        rows: list[GroupStatus | None] = [*stream.groups] or [None]
        for row, group in enumerate(rows):
            head = (escape(stream.name), f"{stream.length:,}") if row == 0 else ("", "")
            table.add_row(*head, *_group_cells(group))
    index, fresh = status.index, status.freshness
    lines = [
        f"index: {index.live_docs:,} docs ({index.deleted_docs:,} deleted), "
        f"{index.chunks:,} chunks",
        f"freshness, last {fresh.window_minutes:g} min: "
        + (
            f"p50 {fresh.p50_ms:,.0f} ms · p99 {fresh.p99_ms:,.0f} ms ({fresh.samples:,} docs)"
            if fresh.p50_ms is not None and fresh.p99_ms is not None
            else "no documents indexed"
        ),
        f"dead letters: {status.dlq_size:,}"
        + (" (`ragstream dlq list`)" if status.dlq_size else ""),
    ]
    style = "yellow" if status.dlq_size else ""
    return Group(table, *(Text(line) for line in lines[:-1]), Text(lines[-1], style=style))


def _group_cells(group: GroupStatus | None) -> tuple[str, ...]:
    if group is None:
        return ("", "", "", "", "")
    lag = "unknown" if group.lag is None else f"{group.lag:,}"
    age = "" if group.oldest_pending_age_s is None else age_text(group.oldest_pending_age_s)
    consumers = f"{len(group.consumers)}" if group.consumers else "[red]none[/]"
    return (escape(group.name), lag, f"{group.pending:,}", age, consumers)


def age_text(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def show(status: Status, console: Console, *, as_json: bool) -> None:
    if as_json:
        console.print_json(status.model_dump_json())
    else:
        console.print(render(status))


async def watch(
    redis: Redis,
    console: Console,
    *,
    interval_s: float,
    minutes: float,
    as_json: bool,
    streams: StreamSettings | None = None,
) -> None:
    """Refresh until cancelled (Ctrl-C); Redis going away shows as a line, not an exit.
    JSON: one object per line and refresh (a warning on stderr while Redis is away)."""
    if as_json:
        while True:
            snapshot = await _snapshot(redis, streams, minutes)
            if isinstance(snapshot, Status):
                console.out(snapshot.model_dump_json(), highlight=False)
            else:
                log.warning("redis unreachable", reason=snapshot)
            await asyncio.sleep(interval_s)
    with Live(console=console, auto_refresh=False) as live:
        while True:
            snapshot = await _snapshot(redis, streams, minutes)
            live.update(
                render(snapshot)
                if isinstance(snapshot, Status)
                else Text(f"Redis unreachable ({snapshot}); retrying…", "red"),
                refresh=True,
            )
            await asyncio.sleep(interval_s)


async def _snapshot(redis: Redis, streams: StreamSettings | None, minutes: float) -> Status | str:
    """The status, or why Redis could not be read."""
    try:
        return await gather(redis, streams, minutes=minutes)
    except REDIS_DOWN as exc:
        return str(exc) or type(exc).__name__
