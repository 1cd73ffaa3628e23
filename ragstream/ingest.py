"""`ragstream ingest`: publish doc-change events and wait until the index acknowledges them."""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from redis.asyncio import Redis
from redis.typing import KeyT, StreamIdT

from ragstream.sources import SourceDoc, load_documents
from shared import tracing, wire
from shared.contracts import DeadLetter, DocDelete, DocIndexed, DocUpsert
from shared.errors import REDIS_DOWN
from shared.settings import StreamSettings

RECONNECT_PAUSE_S = 0.5
PUBLISH_CHUNK = 500
T = TypeVar("T")
ConnectionHook = Callable[[str | None], None]
"""Told the reason when the connection to Redis is lost, then None once it is back."""


def clock_ms() -> int:
    """The default version of a doc event: the wall clock in milliseconds."""
    return time.time_ns() // 1_000_000


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of a non-empty sample (the value below which q % fall)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


@dataclass(frozen=True)
class Published:
    """A doc event on the docs stream: what to pass as a query's `after` to read it back."""

    doc_id: str
    version: int
    entry_id: str

    def line(self) -> str:
        """`doc_id version entry_id`, as `ragstream ingest --print-ids` prints it."""
        return f"{self.doc_id} {self.version} {self.entry_id}"


def after_of(published: Sequence[Published]) -> dict[str, int]:
    """A query's `after` that reads these doc versions (or newer)."""
    after: dict[str, int] = {}
    for p in published:
        after[p.doc_id] = max(after.get(p.doc_id, p.version), p.version)
    return after


@dataclass
class IngestReport:
    docs: int
    indexed: int = 0
    """Docs the index now serves at their version (`unchanged` ones included)."""
    unchanged: int = 0
    """Of those, docs whose content the index already served: nothing was chunked or embedded."""
    stale: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0
    freshness_ms: list[float] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outcomes: dict[tuple[str, int], str] = field(default_factory=dict)
    """(doc_id, version) → indexed / unchanged / deleted / stale / dead_lettered."""
    published: list[Published] = field(default_factory=list)
    """Every event published, with its entry id, in order."""

    @property
    def docs_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float | None:
        return percentile(self.freshness_ms, q) if self.freshness_ms else None

    def describe(self) -> str:
        """One line for people: indexed 5,183 docs in 12.3 s (421 docs/s) · freshness p50 …"""
        text = (
            f"indexed {self.indexed:,} docs in {self.seconds:.1f} s ({self.docs_per_s:,.0f} docs/s)"
        )
        p50, p99 = self.percentile(50), self.percentile(99)
        if p50 is not None and p99 is not None:
            text += f" · freshness p50 {p50:,.0f} ms, p99 {p99:,.0f} ms"
        if self.unchanged:
            text += f" · {self.unchanged:,} unchanged (nothing to embed)"
        if self.stale:
            text += f" · {self.stale:,} stale (older than the index's version)"
        if self.dead_lettered:
            text += f" · {self.dead_lettered:,} dead-lettered"
        return text

    def summary(self) -> dict[str, object]:
        p50, p99 = self.percentile(50), self.percentile(99)
        return {
            "docs": self.docs,
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "stale": self.stale,
            "dead_lettered": self.dead_lettered,
            "seconds": round(self.seconds, 3),
            "docs_per_s": round(self.docs_per_s, 1),
            "freshness_ms_p50": None if p50 is None else round(p50, 1),
            "freshness_ms_p99": None if p99 is None else round(p99, 1),
        }


def traced_entries(events: Sequence[DocUpsert | DocDelete]) -> list[wire.Fields]:
    """Each event's stream entry, carrying the trace context of its own `ingest` span (one doc
    change, one trace; nothing added when tracing is off)."""
    entries = []
    for event in events:
        with tracing.client_span("ingest", doc_id=event.doc_id, version=str(event.version)):
            fields = wire.encode(event)
            tracing.inject(fields)
        entries.append(fields)
    return entries


async def publish_entries(redis: Redis, stream: str, entries: Sequence[wire.Fields]) -> list[str]:
    """XADD each entry; their entry ids, in order."""
    async with redis.pipeline(transaction=False) as pipe:
        for fields in entries:
            pipe.xadd(stream, fields)
        ids: list[bytes | str] = await pipe.execute()
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


async def publish_docs(
    redis: Redis, events: Sequence[DocUpsert | DocDelete], *, streams: StreamSettings
) -> list[Published]:
    """Publish doc events without waiting for the index: their ids and versions, e.g. for a
    query's `after` (`after_of`)."""
    ids = await publish_entries(redis, streams.docs, traced_entries(events))
    return [Published(e.doc_id, e.version, i) for e, i in zip(events, ids, strict=True)]


@dataclass
class Reconnecting:
    """Runs Redis calls again while the server is down (a restart), until a deadline; tells
    `on_connection` once when the connection is lost and once when it is back."""

    deadline: float
    on_connection: ConnectionHook | None = None
    lost: bool = False

    async def call(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """`op()`'s result, or None if Redis stayed down until the deadline."""
        while True:
            try:
                result = await op()
            except REDIS_DOWN as exc:
                self._tell(lost=True, reason=str(exc) or type(exc).__name__)
                left = self.deadline - time.monotonic()
                if left <= 0:
                    return None
                await asyncio.sleep(min(RECONNECT_PAUSE_S, left))
                continue
            self._tell(lost=False)
            return result

    def _tell(self, *, lost: bool, reason: str = "") -> None:
        if lost != self.lost:
            self.lost = lost
            if self.on_connection is not None:
                self.on_connection(reason if lost else None)


async def ingest(
    redis: Redis,
    docs: Sequence[SourceDoc],
    *,
    version: int | None = None,
    streams: StreamSettings | None = None,
    timeout_s: float = 600.0,
    on_progress: Callable[[int], None] | None = None,
    on_connection: ConnectionHook | None = None,
    on_published: Callable[[Sequence[Published]], None] | None = None,
) -> IngestReport:
    """Publish one upsert (or delete) per doc, then follow `rag.indexed` and `rag.dlq` until each
    is settled. A doc's own version wins, else `version`, else the clock (ms).
    `on_published` is told each published chunk of events, with their entry ids."""
    streams = streams or StreamSettings()
    version = version if version is not None else clock_ms()
    events = [d.event(version) for d in docs]
    return await publish_and_wait(
        redis, events, streams=streams, timeout_s=timeout_s,
        on_progress=on_progress, on_connection=on_connection, on_published=on_published,
    )  # fmt: skip


async def publish_and_wait(
    redis: Redis,
    events: Sequence[DocUpsert | DocDelete],
    *,
    streams: StreamSettings,
    timeout_s: float,
    on_progress: Callable[[int], None] | None = None,
    on_connection: ConnectionHook | None = None,
    on_published: Callable[[Sequence[Published]], None] | None = None,
) -> IngestReport:
    """Publish `events`, then follow the indexed and dead-letter streams until each is settled
    or `timeout_s` (publishing included) is over.

    Redis restarting meanwhile is waited out: publishing and reading resume where they were
    (reading from the last entry seen, so no ack is missed; a batch whose publication was cut
    off is published again, which the pipeline's idempotence absorbs).
    """
    cursors: dict[KeyT, StreamIdT] = {
        streams.indexed: await wire.last_entry_id(redis, streams.indexed),
        streams.dlq: await wire.last_entry_id(redis, streams.dlq),
    }
    waiting = {(e.doc_id, e.version) for e in events}
    report = IngestReport(docs=len(events))
    started = time.perf_counter()
    link = Reconnecting(time.monotonic() + timeout_s, on_connection)
    entries = traced_entries(events)
    for start in range(0, len(entries), PUBLISH_CHUNK):
        batch = entries[start : start + PUBLISH_CHUNK]
        ids = await link.call(partial(publish_entries, redis, streams.docs, batch))
        if ids is None:
            continue  # Redis stayed down until the deadline
        published = [
            Published(e.doc_id, e.version, i)
            for e, i in zip(events[start : start + PUBLISH_CHUNK], ids, strict=True)
        ]
        report.published.extend(published)
        if on_published is not None:
            on_published(published)

    async def read_acks() -> object:
        left = link.deadline - time.monotonic()
        return await redis.xread(cursors, block=max(1, int(min(left, 0.5) * 1000)), count=1000)

    while waiting and link.deadline > time.monotonic():
        response = await link.call(read_acks)
        settled = 0
        for stream_name, entries_read in wire.read_entries(response or []):
            name = stream_name.decode()
            for entry_id, fields in entries_read:
                cursors[name] = entry_id
                settled += _settle(name == streams.dlq, fields, waiting, report)
        if settled and on_progress is not None:
            on_progress(settled)
    report.seconds = time.perf_counter() - started
    return report


def _settle(
    is_dlq: bool, fields: dict[bytes, bytes], waiting: set[tuple[str, int]], report: IngestReport
) -> int:
    if is_dlq:
        letter = DeadLetter.model_validate_json(wire.payload_of(fields))
        key = (letter.doc_id or "", letter.version if letter.version is not None else -1)
        if key in waiting:
            waiting.discard(key)
            report.outcomes[key] = "dead_lettered"
            report.dead_lettered += 1
            report.dead_letters.append(letter)
            return 1
        return 0
    ack = DocIndexed.model_validate_json(wire.payload_of(fields))
    key = (ack.doc_id, ack.version)
    if key not in waiting:
        return 0
    waiting.discard(key)
    report.outcomes[key] = ack.outcome.value
    if ack.outcome == "stale":
        report.stale += 1
    else:
        report.indexed += 1
        report.unchanged += ack.outcome == "unchanged"
        report.freshness_ms.append(ack.freshness_ms)
    return 1


__all__ = [
    "IngestReport",
    "Published",
    "SourceDoc",
    "after_of",
    "clock_ms",
    "ingest",
    "load_documents",
    "publish_and_wait",
    "publish_docs",
]
