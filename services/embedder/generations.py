"""The embedder's writes across index generations (`shared.generations`): live events go to
every generation the registry lists, `DocReindex` events fill the one being built."""

from collections.abc import Sequence

import structlog

from services.embedder.indexing import ChunkEvent, index_batch, write_to
from shared.contracts import DocReindex
from shared.index_pool import Index, IndexPool
from shared.stage import Outcome
from shared.store.records import DeleteDoc, DocWrite

log = structlog.get_logger("ragstream.embedder")


async def write_batch(
    events: Sequence[ChunkEvent | DocReindex],
    pool: IndexPool,
    out_stream: str,
    docs_stream: str,
) -> list[Outcome]:
    """Live events through `index_batch` on the serving generation (and the others); reindex
    events copied into their generation. One outcome per event, in order."""
    serving, *others = await pool.written()
    outcomes: list[Outcome] = [[] for _ in events]
    live = [i for i, e in enumerate(events) if not isinstance(e, DocReindex)]
    if live:
        done = await index_batch(
            [events[i] for i in live],  # type: ignore[misc]  # DocReindex filtered out
            serving.embedder,
            serving.store,
            out_stream,
            docs_stream,
            also=others,
            recent=serving.recent,
        )
        for i, outcome in zip(live, done, strict=True):
            outcomes[i] = outcome
    reindex = [e for e in events if isinstance(e, DocReindex)]
    if reindex:
        await copy_into(reindex, serving, {o.generation.table: o for o in others})
    return outcomes


async def copy_into(
    events: Sequence[DocReindex], serving: Index, targets: dict[str, Index]
) -> None:
    """Write each doc as the serving generation serves it now (its version, or its tombstone)
    into the event's generation, embedded by that generation's model. Events for a generation
    no longer listed (a cancelled reindex) are dropped."""
    for table in dict.fromkeys(e.table for e in events):
        target = targets.get(table)
        doc_ids = list(dict.fromkeys(e.doc_id for e in events if e.table == table))
        if target is None:
            log.warning("reindex of an unknown generation dropped", table=table, docs=len(doc_ids))
            continue
        served = await serving.store.served(doc_ids)
        writes: list[DocWrite] = []
        for doc_id in doc_ids:
            fence = served.fences.get(doc_id)
            if fence is not None and fence.deleted:
                writes.append(DeleteDoc(doc_id, fence.version))
            elif fence is not None and (doc := served.docs.get(doc_id)) is not None:
                writes.append(doc.at(fence.version))
        n_embedded = await write_to(target, writes)
        log.info("reindexed", table=table, docs=len(writes), n_embedded=n_embedded)
