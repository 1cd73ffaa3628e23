"""Keeping streams bounded without losing work: safe trimming and stale-consumer cleanup.

Trim policy (see docs/reliability.md):
- A stream some consumer group reads is trimmed by ``MINID`` below the *safe floor*: the oldest
  entry any group still needs — the oldest entry of its pending list, or, with nothing pending,
  its last-delivered id. Entries below the floor were delivered to every group and acked, so
  no unread or pending entry is ever dropped (and XAUTOCLAIM never loses a pending entry).
- A stream without groups that is not a stage input (freshness acks, answers) is trimmed by age
  when published to (``retention_s``).
- The dead-letter stream is never trimmed automatically: `ragstream dlq purge` empties it.
"""

import time
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

log = structlog.get_logger("ragstream.maintenance")

StreamId = tuple[int, int]

_DELETE_IF_IDLE = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #pending > 0 then return -1 end
return redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
"""
"""Delete a consumer only if it has nothing pending, atomically (DELCONSUMER drops a consumer's
pending entries, which would then never be redelivered)."""


def parse_id(value: bytes | str) -> StreamId:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(value: StreamId) -> str:
    return f"{value[0]}-{value[1]}"


def age_floor(retention_s: float, now_s: float | None = None) -> str:
    """The MINID that keeps the last `retention_s` seconds of a stream (ids are ms times)."""
    now_ms = int((time.time() if now_s is None else now_s) * 1000)
    return f"{max(0, now_ms - int(retention_s * 1000))}-0"


async def safe_floor(redis: Redis, stream: str) -> StreamId | None:
    """Oldest entry any group of `stream` still needs; None if no group reads it (or no stream).

    Per group: its oldest pending id if anything is pending, and its last-delivered id (entries
    after it are unread). The floor is the minimum over groups.
    """
    try:
        groups: list[dict[str, Any]] = await redis.xinfo_groups(stream)
    except ResponseError:  # no such key
        return None
    if not groups:
        return None
    floor: StreamId | None = None
    for group in groups:
        candidates = [parse_id(group["last-delivered-id"])]
        if int(group["pending"]):
            summary = await redis.xpending(stream, group["name"])
            if summary.get("min"):
                candidates.append(parse_id(summary["min"]))
        low = min(candidates)
        floor = low if floor is None else min(floor, low)
    return floor


async def trim_acknowledged(redis: Redis, stream: str, *, approximate: bool = True) -> int:
    """Trim the entries of `stream` every group has acked; returns how many were removed.

    Approximate trimming only removes whole internal nodes below the floor: never more.
    """
    floor = await safe_floor(redis, stream)
    if floor is None or floor == (0, 0):
        return 0
    removed = int(await redis.xtrim(stream, minid=format_id(floor), approximate=approximate))
    if removed:
        log.info("trimmed", stream=stream, removed=removed, below=format_id(floor))
    return removed


async def remove_stale_consumers(
    redis: Redis, stream: str, group: str, *, idle_s: float, keep: str
) -> list[str]:
    """Delete consumers of `group` with nothing pending, idle longer than `idle_s` (not `keep`).

    A consumer with pending entries is never removed: its entries wait for reclaim. A removed
    consumer that is in fact alive is recreated by its next read.
    """
    try:
        consumers: list[dict[str, Any]] = await redis.xinfo_consumers(stream, group)
    except ResponseError:  # no stream or group yet
        return []
    removed: list[str] = []
    for consumer in consumers:
        name = consumer["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        if name == keep or int(consumer["pending"]) or int(consumer["idle"]) < idle_s * 1000:
            continue
        if int(await redis.eval(_DELETE_IF_IDLE, 1, stream, group, name)) == 0:
            removed.append(name)
    if removed:
        log.info("removed stale consumers", stream=stream, group=group, consumers=removed)
    return removed
