"""Chunk events in, index writes and freshness acks out: the embedder stage's logic."""

from collections.abc import Sequence
from datetime import datetime

import numpy as np
import structlog

from shared import metrics
from shared.chunk_text import embedding_text
from shared.contracts import ChunkedDoc, DocDelete, DocIndexed, IndexOutcome
from shared.contracts.base import utcnow
from shared.embedding import Embedder, encode_async
from shared.stage import Outcome, Publication
from shared.store.base import Store
from shared.store.records import (
    ChunkRecord,
    DeleteDoc,
    DocWrite,
    UpsertDoc,
    WriteOutcome,
    metadata_tags,
)

log = structlog.get_logger("ragstream.embedder")


def newest_per_doc(events: Sequence[ChunkedDoc | DocDelete]) -> set[int]:
    """Indexes of the events that are the newest of their doc within the batch."""
    best: dict[str, int] = {}
    for index, event in enumerate(events):
        current = best.get(event.doc_id)
        if current is None or _rank(event) >= _rank(events[current]):
            best[event.doc_id] = index
    return set(best.values())


def _rank(event: ChunkedDoc | DocDelete) -> tuple[int, int]:
    # At equal versions a delete wins, as it does in the store.
    return (event.version, 1 if isinstance(event, DocDelete) else 0)


def records_of(doc: ChunkedDoc) -> list[ChunkRecord]:
    tags = metadata_tags(doc.metadata)
    return [
        ChunkRecord(
            chunk_id=c.chunk_id,
            doc_id=doc.doc_id,
            version=doc.version,
            ordinal=c.ordinal,
            title=doc.title,
            text=c.text,
            section_path=c.section_path,
            char_start=c.char_start,
            char_end=c.char_end,
            source=doc.source,
            tags=tags,
        )
        for c in doc.chunks
    ]


async def index_batch(
    events: Sequence[ChunkedDoc | DocDelete], embedder: Embedder, store: Store, out_stream: str
) -> list[Outcome]:
    """Embed every chunk of the batch in one go, apply all writes, ack each event."""
    keep = newest_per_doc(events)
    upserts = [e for i, e in enumerate(events) if i in keep and isinstance(e, ChunkedDoc)]
    records = {id(doc): records_of(doc) for doc in upserts}
    texts = [
        embedding_text(r.title, r.section_path, r.text) for doc in upserts for r in records[id(doc)]
    ]
    vectors = await encode_async(embedder, texts)

    writes: list[DocWrite] = []
    write_index: dict[int, int] = {}
    offset = 0
    for index, event in enumerate(events):
        if index not in keep:
            continue
        write_index[index] = len(writes)
        if isinstance(event, DocDelete):
            writes.append(DeleteDoc(event.doc_id, event.version))
            continue
        doc_records = records[id(event)]
        writes.append(
            UpsertDoc(
                event.doc_id,
                event.version,
                doc_records,
                np.ascontiguousarray(vectors[offset : offset + len(doc_records)]),
            )
        )
        offset += len(doc_records)

    results = await store.apply(writes)
    indexed_at = utcnow()
    outcomes: list[Outcome] = []
    for index, event in enumerate(events):
        result = results[write_index[index]] if index in write_index else WriteOutcome.STALE
        ack = _ack(event, result, indexed_at)
        log.info(
            "indexed",
            doc_id=event.doc_id,
            version=event.version,
            outcome=ack.outcome.value,
            n_chunks=ack.n_chunks,
            freshness_ms=round(ack.freshness_ms, 1),
        )
        if ack.outcome is not IndexOutcome.STALE:
            metrics.doc_freshness_seconds.labels("embedder").observe(ack.freshness_ms / 1000)
        outcomes.append([Publication(out_stream, ack)])
    return outcomes


def _ack(event: ChunkedDoc | DocDelete, result: WriteOutcome, indexed_at: datetime) -> DocIndexed:
    if result is WriteOutcome.STALE:
        outcome = IndexOutcome.STALE
    elif isinstance(event, DocDelete):
        outcome = IndexOutcome.DELETED
    else:
        outcome = IndexOutcome.INDEXED
    return DocIndexed(
        doc_id=event.doc_id,
        version=event.version,
        outcome=outcome,
        n_chunks=len(event.chunks)
        if isinstance(event, ChunkedDoc) and outcome is IndexOutcome.INDEXED
        else 0,
        doc_emitted_at=event.doc_emitted_at if isinstance(event, ChunkedDoc) else event.emitted_at,
        indexed_at=indexed_at,
    )
