"""`ragstream status`: what the pipeline holds, read from Redis alone (no access to the index).

Per stream its length and, per consumer group, the lag (entries not yet delivered to the group;
unknown when Redis cannot tell, e.g. after entries were deleted), the pending entries (delivered,
not acked), the age of the oldest pending one (from its entry id, i.e. since it was published)
and the consumers up and reading now (`shared.readiness`; `XINFO CONSUMERS` misses some on
Redis 7.0). The index as the embedder recorded it (`shared.doc_state`), and the freshness of the
index over the last minutes (the `DocIndexed` acks, stale ones left out).
"""

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from ragstream.ingest import percentile
from shared import doc_state, wire
from shared.contracts import DocIndexed, IndexOutcome
from shared.readiness import ready_consumers
from shared.settings import StreamSettings

ROLES = ("docs", "chunks", "indexed", "queries", "retrieved", "reranked", "answers", "dlq")
PAGE = 1000


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GroupStatus(_Model):
    name: str
    lag: int | None
    """Entries not yet delivered to the group; None when Redis cannot tell."""
    pending: int
    """Delivered to a consumer, not acknowledged yet."""
    oldest_pending_age_s: float | None
    """Age of the oldest pending entry, since it was published."""
    consumers: list[str]
    """Consumers up and reading now."""


class StreamStatus(_Model):
    role: str
    name: str
    length: int
    groups: list[GroupStatus]


class IndexStatus(_Model):
    """Documents whose indexing the embedder acknowledged, as it recorded them."""

    docs: int
    """Live and deleted (a delete is kept as a tombstone)."""
    live_docs: int
    deleted_docs: int
    chunks: int
    """Chunks of the live documents."""


class FreshnessStatus(_Model):
    """Publication-to-searchable time of the documents indexed or deleted in the window."""

    window_minutes: float
    samples: int
    p50_ms: float | None
    p99_ms: float | None


class Status(_Model):
    taken_at: datetime
    """The Redis server's clock (entry ids use it too)."""
    streams: list[StreamStatus]
    dlq_size: int
    index: IndexStatus
    freshness: FreshnessStatus


async def gather(
    redis: Redis, streams: StreamSettings | None = None, *, minutes: float = 5.0
) -> Status:
    streams = streams or StreamSettings()
    seconds, micros = await redis.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    names = {role: str(getattr(streams, role)) for role in ROLES}
    return Status(
        taken_at=datetime.fromtimestamp(now_ms / 1000, UTC),
        streams=[await stream_status(redis, role, name, now_ms) for role, name in names.items()],
        dlq_size=int(await redis.xlen(streams.dlq)),
        index=await index_status(redis, streams.indexed),
        freshness=await freshness(redis, streams.indexed, now_ms, minutes),
    )


async def stream_status(redis: Redis, role: str, name: str, now_ms: int) -> StreamStatus:
    try:
        infos: list[dict[str, Any]] = await redis.xinfo_groups(name)
    except ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        infos = []
    groups = [await group_status(redis, name, info, now_ms) for info in infos]
    return StreamStatus(role=role, name=name, length=int(await redis.xlen(name)), groups=groups)


async def group_status(redis: Redis, stream: str, info: dict[str, Any], now_ms: int) -> GroupStatus:
    group = wire.text_of(info["name"])
    pending = int(info["pending"])
    oldest_age_s = None
    if pending:
        summary = await redis.xpending(stream, group)
        if summary.get("min"):
            oldest_age_s = max(0.0, (now_ms - wire.entry_ms(summary["min"])) / 1000)
    lag = info.get("lag")
    return GroupStatus(
        name=group,
        lag=None if lag is None else int(lag),
        pending=pending,
        oldest_pending_age_s=oldest_age_s,
        consumers=sorted(await ready_consumers(redis, stream, group)),
    )


async def index_status(redis: Redis, indexed_stream: str) -> IndexStatus:
    """One HSCAN of the per-doc state hash (its size is the number of documents)."""
    states: dict[str, doc_state.DocState] = {}
    async for field, raw in redis.hscan_iter(doc_state.state_key(indexed_stream), count=PAGE):
        doc_id = wire.text_of(field)
        try:
            states[doc_id] = doc_state.DocState.model_validate(
                {**json.loads(raw), "doc_id": doc_id}
            )
        except (TypeError, ValueError):
            continue
    live = [s for s in states.values() if not s.deleted]
    return IndexStatus(
        docs=len(states),
        live_docs=len(live),
        deleted_docs=len(states) - len(live),
        chunks=sum(s.n_chunks for s in live),
    )


async def freshness(
    redis: Redis, indexed_stream: str, now_ms: int, minutes: float
) -> FreshnessStatus:
    """Percentiles of `DocIndexed.freshness_ms` over the acks published in the last `minutes`."""
    samples: list[float] = []
    start = str(max(0, now_ms - int(minutes * 60_000)))
    while True:
        page = wire.stream_entries(await redis.xrange(indexed_stream, min=start, count=PAGE))
        for _, fields in page:
            try:
                ack = DocIndexed.model_validate_json(wire.payload_of(fields))
            except ValidationError:
                continue
            if ack.outcome is not IndexOutcome.STALE:
                samples.append(ack.freshness_ms)
        if len(page) < PAGE:
            break
        start = f"({page[-1][0].decode()}"
    return FreshnessStatus(
        window_minutes=minutes,
        samples=len(samples),
        p50_ms=percentile(samples, 50) if samples else None,
        p99_ms=percentile(samples, 99) if samples else None,
    )
