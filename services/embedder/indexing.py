"""Chunk events in, index writes and freshness acks out: the embedder stage's logic.

Only what changed is embedded. Before embedding, the batch reads its docs' fences and served
rows with their vectors (one concurrent read; the fences also save `apply` its first read). A
`DocUnchanged` advances the doc to its new version on the rows it has (`AdvanceDoc`: a fence
marker, no rows written), carrying those rows in case the store must copy them after all; a
`ChunkedDoc` takes the vector of every chunk whose embedding text the served version already
has. Other generations (`also`) get the carried copy, embedded by their own model.
"""

from collections.abc import Mapping, Sequence
from datetime import datetime

import numpy as np
import structlog

from shared import metrics
from shared.chunk_text import embedding_text
from shared.contracts import ChunkedDoc, DocDelete, DocIndexed, DocUnchanged, IndexOutcome
from shared.contracts.base import utcnow
from shared.embedding import Embedder, encode_async
from shared.index_pool import Index
from shared.stage import Outcome, Publication
from shared.store.base import Store
from shared.store.records import (
    AdvanceDoc,
    ChunkRecord,
    DeleteDoc,
    DocWrite,
    Served,
    UpsertDoc,
    Vector,
    WriteOutcome,
    metadata_tags,
)

log = structlog.get_logger("ragstream.embedder")

ChunkEvent = ChunkedDoc | DocUnchanged | DocDelete


def newest_per_doc(events: Sequence[ChunkEvent]) -> set[int]:
    """Indexes of the events that are the newest of their doc within the batch."""
    best: dict[str, int] = {}
    for index, event in enumerate(events):
        current = best.get(event.doc_id)
        if current is None or _rank(event) >= _rank(events[current]):
            best[event.doc_id] = index
    return set(best.values())


def _rank(event: ChunkEvent) -> tuple[int, int]:
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


def _text(record: ChunkRecord) -> str:
    return embedding_text(record.title, record.section_path, record.text)


def advanced(event: DocUnchanged, served: Served) -> AdvanceDoc | None:
    """The doc at the event's version on the rows it is served with, if the index still serves
    the version the chunker found unchanged; None if it moved on (the doc must be chunked)."""
    doc, fence = served.docs.get(event.doc_id), served.fences.get(event.doc_id)
    if doc is None or fence is None or fence.version != event.indexed_version:
        return None
    return AdvanceDoc(event.doc_id, event.version, doc)


def known_vectors(served: Mapping[str, UpsertDoc]) -> dict[str, Vector]:
    """Embedding text → vector of every served row."""
    return {
        _text(chunk): vector
        for doc in served.values()
        for chunk, vector in zip(doc.chunks, doc.vectors, strict=True)
    }


async def embed_missing(
    texts: Sequence[str], known: dict[str, Vector], embedder: Embedder
) -> tuple[Vector, int]:
    """One vector per text, embedding only the texts `known` lacks (each distinct one once);
    and how many were embedded. Adds the new vectors to `known`."""
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    if missing:
        known.update(zip(missing, await encode_async(embedder, missing), strict=True))
    matrix = np.stack([known[t] for t in texts]) if texts else np.empty((0, embedder.dim))
    return np.ascontiguousarray(matrix, dtype=np.float32), len(missing)


async def write_to(index: Index, writes: Sequence[DocWrite]) -> int:
    """Apply `writes` to another generation's index, with that generation's model's vectors
    (reusing those its served rows have for the same text; an advance is written as the rows it
    carries, since that index holds other rows). How many chunks it embedded."""
    writes = [w.carried if isinstance(w, AdvanceDoc) else w for w in writes]
    upserts = [w for w in writes if isinstance(w, UpsertDoc)]
    served = await index.store.served([w.doc_id for w in upserts]) if upserts else Served({}, {})
    texts = [_text(c) for w in upserts for c in w.chunks]
    vectors, n_embedded = await embed_missing(texts, known_vectors(served.docs), index.embedder)
    rewritten: list[DocWrite] = []
    offset = 0
    for write in writes:
        if isinstance(write, UpsertDoc):
            n = len(write.chunks)
            rows = vectors[offset : offset + n]
            rewritten.append(UpsertDoc(write.doc_id, write.version, write.chunks, rows))
            offset += n
        else:
            rewritten.append(write)
    if rewritten:
        await index.store.apply(rewritten, fences=served.fences, prune=False)
    return n_embedded


async def index_batch(
    events: Sequence[ChunkEvent],
    embedder: Embedder,
    store: Store,
    out_stream: str,
    docs_stream: str = "rag.docs",
    *,
    also: Sequence[Index] = (),
) -> list[Outcome]:
    """Embed what changed in the batch in one go, apply all writes, ack each event. The same
    writes go to the `also` generations first (a reindex is building one, or one was retired
    recently), so an acked version is in every generation a reader may be using."""
    keep = newest_per_doc(events)
    kept = {i: e for i, e in enumerate(events) if i in keep}
    upserts = [e for e in kept.values() if not isinstance(e, DocDelete)]
    served = await store.served([e.doc_id for e in upserts]) if upserts else Served({}, {})
    known = known_vectors(served.docs)

    writes: list[DocWrite] = []
    write_of: dict[int, int] = {}
    resend: dict[int, DocUnchanged] = {}
    records = {i: records_of(e) for i, e in kept.items() if isinstance(e, ChunkedDoc)}
    texts = [_text(r) for doc in records.values() for r in doc]
    vectors, n_embedded = await embed_missing(texts, known, embedder)
    offset = 0
    for index, event in kept.items():
        write: DocWrite
        if isinstance(event, DocDelete):
            write = DeleteDoc(event.doc_id, event.version)
        elif isinstance(event, DocUnchanged):
            advance = advanced(event, served)
            if advance is None:
                resend[index] = event
                continue
            write = advance
        else:
            n = len(records[index])
            write = UpsertDoc(
                event.doc_id, event.version, records[index], vectors[offset : offset + n]
            )
            offset += n
        write_of[index] = len(writes)
        writes.append(write)
    metrics.chunk_vectors.labels("embedded").inc(n_embedded)
    metrics.chunk_vectors.labels("reused").inc(sum(map(_rows_of, writes)) - n_embedded)

    for generation in also:
        await write_to(generation, writes)
    # The prune is left to the stage's timer (`Store.prune`): off the ack path, one per many
    # batches; readers never see the rows it removes anyway.
    results = await store.apply(writes, fences=served.fences, prune=False)
    indexed_at = utcnow()
    outcomes: list[Outcome] = []
    for index, event in enumerate(events):
        if index in resend:
            log.info("index moved on, chunking after all", doc_id=event.doc_id)
            forced = resend[index].doc.model_copy(update={"force": True})
            outcomes.append([Publication(docs_stream, forced)])
            continue
        position = write_of.get(index)
        if position is None:  # an older event of a doc the batch writes a newer one of
            ack = _ack(event, WriteOutcome.STALE, 0, indexed_at)
        else:
            ack = _ack(event, results[position], _rows_of(writes[position]), indexed_at)
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
    log.debug("embedded", n_embedded=n_embedded, n_texts=len(texts))
    return outcomes


def _rows_of(write: DocWrite) -> int:
    if isinstance(write, AdvanceDoc):
        return len(write.rows.chunks)
    return len(write.chunks) if isinstance(write, UpsertDoc) else 0


def _ack(
    event: ChunkEvent, result: WriteOutcome, n_chunks: int, indexed_at: datetime
) -> DocIndexed:
    if result is WriteOutcome.STALE:
        outcome, n_chunks = IndexOutcome.STALE, 0
    elif isinstance(event, DocDelete):
        outcome, n_chunks = IndexOutcome.DELETED, 0
    elif isinstance(event, DocUnchanged):
        outcome = IndexOutcome.UNCHANGED
    else:
        outcome = IndexOutcome.INDEXED
    return DocIndexed(
        doc_id=event.doc_id,
        version=event.version,
        outcome=outcome,
        n_chunks=n_chunks,
        doc_emitted_at=event.emitted_at if isinstance(event, DocDelete) else event.doc_emitted_at,
        indexed_at=indexed_at,
        fingerprint="" if isinstance(event, DocDelete) else event.fingerprint,
    )
