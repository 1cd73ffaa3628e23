"""The generator's second input: freshness acks (`rag.indexed`) in, `answer.invalidated` out.

For each `DocIndexed` that serves a newer version of a doc (or deletes it), every live
subscription whose Answer cited an older version of that doc gets an `AnswerInvalidated` on its
reply stream, and that doc leaves the subscription (`services.generator.subscribing` ends it in
the same transaction). A subscription with `regenerate` also gets its query published again
(a new event, same `query_id`, `after` the changed versions so the new Answer reads them), once
per batch; its next Answer `supersedes` the invalidated one.

Stale acks change nothing; a doc acked several times in one batch counts once, at its newest
version. Delivery is the stage's: the publications and the ack commit together, so a crash
redelivers the ack and nothing is lost. Two replicas handling two changes of one doc at once
may both tell the same subscriber (at least once: dedupe on `query_id`, `doc_id`,
`new_version`).
"""

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import uuid4

import structlog
from redis.asyncio import Redis

from shared import answer_watch
from shared.answer_watch import Watch, WatchKeys
from shared.contracts import AnswerInvalidated, DocIndexed, IndexOutcome, Query
from shared.contracts.base import utcnow
from shared.contracts.queries import MAX_AFTER_DOCS
from shared.settings import StreamSettings
from shared.stage import Outcome, Publication

log = structlog.get_logger("ragstream.generator.invalidation")


@dataclass
class _Hit:
    """One subscription invalidated by this batch, possibly by several docs."""

    watch: Watch
    changes: list[tuple[int, AnswerInvalidated]] = field(default_factory=list)
    """(index of the entry that carries the change, the invalidation)."""


def latest_changes(events: Sequence[DocIndexed]) -> dict[str, tuple[int, DocIndexed]]:
    """doc_id → (index in the batch, its newest ack that changed what the doc says).

    Stale acks changed nothing; `unchanged` ones moved the version on with the same content
    (and the same chunk ids), so an answer citing the older version still reads true."""
    latest: dict[str, tuple[int, DocIndexed]] = {}
    for index, event in enumerate(events):
        if event.outcome in (IndexOutcome.STALE, IndexOutcome.UNCHANGED):
            continue
        current = latest.get(event.doc_id)
        if current is None or event.version >= current[1].version:
            latest[event.doc_id] = (index, event)
    return latest


def regenerated_query(raw: str, changed: dict[str, int]) -> Query:
    """The subscription's query as a new event: same `query_id`, `after` the changed versions,
    the same time budget as the original (its deadline, if it had one, moves with it)."""
    query = Query.model_validate_json(raw)
    after = dict(query.after or {})
    for doc_id, version in changed.items():
        if doc_id in after or len(after) < MAX_AFTER_DOCS:
            after[doc_id] = max(after.get(doc_id, 0), version)
    now = utcnow()
    deadline = None if query.deadline is None else now + (query.deadline - query.emitted_at)
    return query.model_copy(
        update={"event_id": uuid4(), "emitted_at": now, "after": after, "deadline": deadline}
    )


async def invalidate_batch(
    events: Sequence[DocIndexed], *, redis: Redis, streams: StreamSettings
) -> list[Outcome]:
    """One outcome per ack: the invalidations (and regenerated queries) its change causes."""
    keys = WatchKeys(streams.indexed)
    outcomes: list[list[Publication]] = [[] for _ in events]
    latest = latest_changes(events)
    watching = await answer_watch.watchers(redis, keys, latest)
    candidates = [
        (doc_id, query_id, cited)
        for doc_id, subscribers in watching.items()
        for query_id, cited in subscribers.items()
        if latest[doc_id][1].version > cited
    ]
    if not candidates:
        return list(outcomes)
    live = await answer_watch.subscriptions(redis, keys, (q for _, q, _ in candidates))
    now_ms = int(utcnow().timestamp() * 1000)
    hits: dict[str, _Hit] = {}
    garbage: dict[str, list[str]] = defaultdict(list)
    for doc_id, query_id, cited in candidates:
        watch = live.get(query_id)
        if watch is None or watch.cited.get(doc_id) != cited:
            garbage[doc_id].append(query_id)  # its subscription ended or moved on
            continue
        if watch.until_ms <= now_ms or watch.regenerating:
            continue
        index, change = latest[doc_id]
        invalidated = AnswerInvalidated(
            query_id=query_id,
            doc_id=doc_id,
            old_version=cited,
            new_version=change.version,
            deleted=change.outcome is IndexOutcome.DELETED,
        )
        hits.setdefault(query_id, _Hit(watch)).changes.append((index, invalidated))
    if garbage:
        await answer_watch.forget_fields(redis, keys, garbage)
    for hit in hits.values():
        hit.changes.sort(key=lambda change: change[0])
        first = hit.changes[0][0]
        if hit.watch.query is not None:
            # before the invalidations, in the earliest entry: its projection must mark the
            # subscription regenerating before theirs end it doc by doc
            changed = {inv.doc_id: inv.new_version for _, inv in hit.changes}
            query = regenerated_query(hit.watch.query, changed)
            outcomes[first].append(Publication(streams.queries, query))
        for index, invalidated in hit.changes:
            outcomes[index].append(Publication(hit.watch.reply_to, invalidated))
            log.info(
                "answer invalidated",
                query_id=invalidated.query_id,
                doc_id=invalidated.doc_id,
                old_version=invalidated.old_version,
                new_version=invalidated.new_version,
                deleted=invalidated.deleted,
                regenerate=hit.watch.query is not None,
            )
    return list(outcomes)
