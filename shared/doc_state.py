"""What the index serves per document, as a Redis hash kept beside the freshness acks.

The embedder records every `DocIndexed` ack it publishes (in the same MULTI/EXEC as the ack), so
clients that only reach Redis (the gateway, `ragstream status`) can answer "which version of doc
X is searchable, in how many chunks" without access to the index. A recorded version never goes
backwards: two embedder replicas may commit v5 and v6 of a doc in either order, and a stale ack
(an older version the index dropped) changes nothing.
"""

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from shared.contracts import DocIndexed, IndexOutcome

_RECORD_IF_NEWER = """
local recorded = 0
for i = 1, #ARGV, 3 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  if not (current and tonumber(cjson.decode(current)['version']) > tonumber(ARGV[i + 1])) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
    recorded = recorded + 1
  end
end
return recorded
"""


class DocState(BaseModel):
    """The version of a document the index serves (`deleted`: none, since that version)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    doc_id: str
    version: int
    deleted: bool
    n_chunks: int
    indexed_at: datetime
    fingerprint: str = ""
    """What the served version's rows are made from (see `ChunkedDoc.fingerprint`)."""


def state_key(indexed_stream: str) -> str:
    """The hash beside the freshness stream (one per pipeline, like the stream names)."""
    return f"{indexed_stream}:state"


def record(pipe: Any, events: Sequence[DocIndexed], *, indexed_stream: str) -> None:
    """Queue the recording of `events`, in order, on a Redis pipeline as one command (called
    inside the ack transaction)."""
    args: list[str | int] = []
    for event in events:
        if event.outcome is IndexOutcome.STALE:
            continue
        state = DocState(
            doc_id=event.doc_id,
            version=event.version,
            deleted=event.outcome is IndexOutcome.DELETED,
            n_chunks=event.n_chunks,
            indexed_at=event.indexed_at,
            fingerprint=event.fingerprint,
        )
        args += [event.doc_id, event.version, state.model_dump_json(exclude={"doc_id"})]
    if args:
        pipe.eval(_RECORD_IF_NEWER, 1, state_key(indexed_stream), *args)


async def read(redis: Redis, indexed_stream: str, doc_id: str) -> DocState | None:
    """The recorded state of `doc_id`, or None if the index never acknowledged it."""
    return (await read_many(redis, indexed_stream, [doc_id]))[0]


async def read_many(redis: Redis, indexed_stream: str, doc_ids: list[str]) -> list[DocState | None]:
    """The recorded states of `doc_ids`, in order (one round trip)."""
    if not doc_ids:
        return []
    raws = await redis.hmget(state_key(indexed_stream), doc_ids)
    return [
        None if raw is None else DocState.model_validate({**json.loads(raw), "doc_id": doc_id})
        for doc_id, raw in zip(doc_ids, raws, strict=True)
    ]


async def scan(redis: Redis, indexed_stream: str, batch: int = 1000) -> list[DocState]:
    """Every recorded state (HSCAN: the hash is read in pieces, never blocking Redis)."""
    states = []
    async for doc_id, raw in redis.hscan_iter(state_key(indexed_stream), count=batch):
        name = doc_id.decode() if isinstance(doc_id, bytes) else doc_id
        states.append(DocState.model_validate({**json.loads(raw), "doc_id": name}))
    return states


async def count(redis: Redis, indexed_stream: str) -> int:
    """How many documents have a recorded state (deleted ones included)."""
    return int(await redis.hlen(state_key(indexed_stream)))
