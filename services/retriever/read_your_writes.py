"""Read-your-writes: a query with `after` ({doc_id: version}) is searched once the index serves
at least those versions (a delete at or above one counts), or after `after_wait_s` (bounded by
the query's deadline) with `possibly_stale` set on what it retrieved.

How it waits: it notes the freshness stream's newest entry, asks the index for the docs'
served versions (`Store.current_version`, all docs in one read on the versioned stores), and
while some are missing blocks on the freshness stream (`rag.indexed`) from that entry; an ack
of a missing doc at a high enough version wakes it to ask the index again (and it asks every
`RECHECK_S` anyway). The embedder acks only after the index committed, so the wait ends within
a Redis round trip and one index read of the version becoming searchable, with no polling
load while nothing changes. The index, not the ack, decides: it is what the search reads.

The queries of a batch wait concurrently, then the batch is retrieved as usual; a query
without `after` in the same batch waits with it (the batch commits as one).
"""

import asyncio
import time
from collections.abc import Mapping, Sequence
from uuid import UUID

import structlog
from redis.asyncio import Redis

from services.retriever.settings import RetrieverSettings
from shared import wire
from shared.contracts import DocIndexed, Query, Retrieved
from shared.deadlines import seconds_left
from shared.delivery import BatchHandler, Outcome, Publication
from shared.errors import REDIS_DOWN, PermanentError
from shared.settings import StreamSettings
from shared.store.base import Store
from shared.store.versioning import VersionedStore

log = structlog.get_logger("ragstream.retriever")
RECHECK_S = 0.5
"""Ask the index again at least this often while waiting, acks or not."""


async def missing_versions(store: Store, after: Mapping[str, int]) -> dict[str, int]:
    """The `after` entries the index does not serve yet: doc_id → wanted version."""
    docs = list(after)
    if isinstance(store, VersionedStore):
        fences = await store.fences(docs)
        states = [fences.get(doc) for doc in docs]
    else:
        states = list(await asyncio.gather(*(store.current_version(doc) for doc in docs)))
    return {
        doc: after[doc]
        for doc, state in zip(docs, states, strict=True)
        if state is None or state.version < after[doc]
    }


async def _acks_for(
    redis: Redis, stream: str, cursor: bytes, missing: Mapping[str, int], block_s: float
) -> tuple[bytes, bool]:
    """Read the freshness stream from `cursor` for up to `block_s`: the new cursor, and whether
    an ack of a missing doc at (or above) its wanted version came by."""
    response = await redis.xread({stream: cursor}, block=max(1, int(block_s * 1000)), count=500)
    relevant = False
    for _, entries in wire.read_entries(response):
        for entry_id, fields in entries:
            cursor = entry_id
            try:
                ack = DocIndexed.model_validate_json(wire.payload_of(fields))
            except ValueError:
                continue
            wanted = missing.get(ack.doc_id)
            relevant = relevant or (wanted is not None and ack.version >= wanted)
    return cursor, relevant


async def wait_for_versions(
    after: Mapping[str, int],
    *,
    store: Store,
    redis: Redis,
    indexed_stream: str,
    budget_s: float,
) -> bool:
    """Whether the index serves every `after` version within `budget_s` seconds."""
    deadline = time.monotonic() + budget_s
    cursor: bytes | None
    try:
        cursor = await wire.last_entry_id(redis, indexed_stream)  # before the first look
    except REDIS_DOWN:
        cursor = None
    missing = await missing_versions(store, after)
    looked = time.monotonic()
    while missing:
        now = time.monotonic()
        if now >= deadline:
            return False
        block_s = max(0.001, min(deadline, looked + RECHECK_S) - now)
        relevant = False
        if cursor is None:
            await asyncio.sleep(block_s)
        else:
            try:
                cursor, relevant = await _acks_for(redis, indexed_stream, cursor, missing, block_s)
            except REDIS_DOWN:
                await asyncio.sleep(block_s)  # then ask the index, as on the periodic look
        now = time.monotonic()
        if relevant or now >= looked + RECHECK_S or now >= deadline:
            missing = await missing_versions(store, missing)
            looked = now
    return True


def budget_of(query: Query, settings: RetrieverSettings) -> float:
    """How long `query` may wait: `after_wait_s`, never past its deadline."""
    if query.deadline is None:
        return settings.after_wait_s
    return max(0.0, min(settings.after_wait_s, seconds_left(query.deadline)))


async def retrieve_after(
    queries: Sequence[Query],
    *,
    retrieve: BatchHandler[Query],
    store: Store,
    redis: Redis,
    streams: StreamSettings,
    settings: RetrieverSettings,
) -> Sequence[Outcome]:
    """`retrieve` the batch once the `after` versions of its queries are served (or their wait
    is over: then what they retrieved is `possibly_stale`); the wait counts in `retrieve_ms`."""
    waiting = [q for q in queries if q.after]
    waited_ms: dict[UUID, float] = {}
    stale: set[UUID] = set()
    if waiting:

        async def wait(query: Query) -> None:
            started = time.perf_counter()
            reached = await wait_for_versions(
                query.after or {}, store=store, redis=redis,
                indexed_stream=streams.indexed, budget_s=budget_of(query, settings),
            )  # fmt: skip
            waited_ms[query.event_id] = (time.perf_counter() - started) * 1000
            if not reached:
                stale.add(query.event_id)
            log.info(
                "read-your-writes",
                query_id=query.query_id, docs=len(query.after or {}), reached=reached,
                waited_ms=round(waited_ms[query.event_id], 1),
            )  # fmt: skip

        await asyncio.gather(*(wait(q) for q in waiting))
    outcomes = await retrieve(queries)
    if not waiting:
        return outcomes
    return [_marked(outcome, waited_ms, stale) for outcome in outcomes]


def _marked(outcome: Outcome, waited_ms: Mapping[UUID, float], stale: set[UUID]) -> Outcome:
    if isinstance(outcome, PermanentError):
        return outcome
    return [_marked_publication(p, waited_ms, stale) for p in outcome]


def _marked_publication(
    publication: Publication, waited_ms: Mapping[UUID, float], stale: set[UUID]
) -> Publication:
    retrieved = publication.event
    if not isinstance(retrieved, Retrieved) or retrieved.query.event_id not in waited_ms:
        return publication
    waited = waited_ms[retrieved.query.event_id]
    timings = retrieved.timings
    retrieved = retrieved.model_copy(
        update={
            "possibly_stale": retrieved.query.event_id in stale,
            "timings": timings.model_copy(
                update={"retrieve_ms": (timings.retrieve_ms or 0.0) + waited}
            ),
        }
    )
    return Publication(publication.stream, retrieved)
