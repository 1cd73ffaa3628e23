"""Chunk events in, index writes and freshness acks out: the embedder stage's logic.

Only what changed is embedded. Before embedding, the batch reads its docs' fences and the
served rows, with their vectors, of its chunked docs (one concurrent read; the fences also save
`apply` its first read). A `DocUnchanged` advances the doc to its new version on the rows it has
(`AdvanceDoc`: a fence marker, no rows read or written); where the index turns out not to serve
those rows (`WriteOutcome.UNSERVED`), the doc goes back to the chunker with `force` set. A
`ChunkedDoc` takes the vector of every chunk whose embedding text the served version already
has. Other generations (`also`) get an advance as a copy of the served rows, embedded by their
own model.
"""

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import structlog

from shared import metrics
from shared.chunk_text import embedding_text
from shared.contracts import ChunkedDoc, DocDelete, DocIndexed, DocUnchanged, IndexOutcome
from shared.contracts.base import utcnow
from shared.embedding import Embedder, encode_async
from shared.index_pool import Index
from shared.recent_vectors import RecentVectors
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
    fence = served.fences.get(event.doc_id)
    if fence is None or fence.deleted or fence.version != event.indexed_version:
        return None
    return AdvanceDoc(event.doc_id, event.version, fence.rows)


def _reads_rows(event: ChunkEvent, copies: bool) -> bool:
    """Whether the batch needs `event`'s served rows: to reuse vectors for its chunks, to count
    them (a `DocUnchanged` that does not say how many), or to copy them (`copies`)."""
    if isinstance(event, ChunkedDoc):
        return True
    return isinstance(event, DocUnchanged) and (copies or event.n_chunks is None)


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


async def write_to(
    index: Index, writes: Sequence[DocWrite], served: Mapping[str, UpsertDoc] | None = None
) -> int:
    """Apply `writes` to another generation's index, with that generation's model's vectors
    (reusing those its served rows have for the same text). An advance is written as a copy of
    the rows it names, from `served` (what the serving index serves; that index holds other
    rows), and left out if they are not there. How many chunks it embedded."""
    copied = [_copied(w, served or {}) if isinstance(w, AdvanceDoc) else w for w in writes]
    kept = [w for w in copied if w is not None]
    upserts = [w for w in kept if isinstance(w, UpsertDoc)]
    own = await index.store.served([w.doc_id for w in upserts]) if upserts else Served({}, {})
    texts = [_text(c) for w in upserts for c in w.chunks]
    vectors, n_embedded = await embed_missing(texts, known_vectors(own.docs), index.embedder)
    rewritten: list[DocWrite] = []
    offset = 0
    for write in kept:
        if isinstance(write, UpsertDoc):
            n = len(write.chunks)
            rows = vectors[offset : offset + n]
            rewritten.append(UpsertDoc(write.doc_id, write.version, write.chunks, rows))
            offset += n
        else:
            rewritten.append(write)
    if rewritten:
        await index.store.apply(rewritten, fences=own.fences, prune=False)
    return n_embedded


def _copied(advance: AdvanceDoc, served: Mapping[str, UpsertDoc]) -> UpsertDoc | None:
    rows = served.get(advance.doc_id)
    if rows is None or rows.version != advance.rows_version:
        return None
    return rows.at(advance.version)


@dataclass
class _Writes:
    """What a batch writes: one write per kept event that has one, with its chunk count."""

    writes: list[DocWrite] = field(default_factory=list)
    n_chunks: list[int] = field(default_factory=list)
    of_event: dict[int, int] = field(default_factory=dict)
    """Event index → its write's position."""
    resend: dict[int, DocUnchanged] = field(default_factory=dict)
    """Event index → an unchanged doc to chunk after all (the index moved on)."""

    def add(self, index: int, write: DocWrite, n_chunks: int) -> None:
        self.of_event[index] = len(self.writes)
        self.writes.append(write)
        self.n_chunks.append(n_chunks)


def _writes_of(
    kept: Mapping[int, ChunkEvent],
    served: Served,
    records: Mapping[int, list[ChunkRecord]],
    vectors: Vector,
) -> _Writes:
    planned = _Writes()
    offset = 0
    for index, event in kept.items():
        if isinstance(event, DocDelete):
            planned.add(index, DeleteDoc(event.doc_id, event.version), 0)
        elif isinstance(event, DocUnchanged):
            if (advance := advanced(event, served)) is None:
                planned.resend[index] = event
            else:
                planned.add(index, advance, _served_chunks(event, served))
        else:
            n = len(records[index])
            rows = vectors[offset : offset + n]
            planned.add(index, UpsertDoc(event.doc_id, event.version, records[index], rows), n)
            offset += n
    return planned


async def index_batch(
    events: Sequence[ChunkEvent],
    embedder: Embedder,
    store: Store,
    out_stream: str,
    docs_stream: str = "rag.docs",
    *,
    also: Sequence[Index] = (),
    recent: RecentVectors | None = None,
) -> list[Outcome]:
    """Embed what changed in the batch in one go, apply all writes, ack each event. The same
    writes go to the `also` generations first (a reindex is building one, or one was retired
    recently), so an acked version is in every generation a reader may be using. `recent`:
    what this writer last wrote or read of the docs (see `_reusable`), kept up to date."""
    keep = newest_per_doc(events)
    kept = {i: e for i, e in enumerate(events) if i in keep}
    records = {i: records_of(e) for i, e in kept.items() if isinstance(e, ChunkedDoc)}
    texts_of = {i: [_text(r) for r in doc] for i, doc in records.items()}
    served, known, n_guessed = await _reusable(
        kept, texts_of, store, embedder, recent or RecentVectors(0), copies=bool(also)
    )
    texts = [t for doc in texts_of.values() for t in doc]
    vectors, n_embedded = await embed_missing(texts, known, embedder)
    n_embedded += n_guessed
    planned = _writes_of(kept, served, records, vectors)
    metrics.chunk_vectors.labels("embedded").inc(n_embedded)
    metrics.chunk_vectors.labels("reused").inc(sum(planned.n_chunks) - n_embedded)

    for generation in also:
        await write_to(generation, planned.writes, served.docs)
    # The prune is left to the stage's timer (`Store.prune`): off the ack path, one per many
    # batches; readers never see the rows it removes anyway.
    results = await store.apply(planned.writes, fences=served.fences, prune=False)
    if recent is not None:
        _remember(recent, served.docs.values(), planned.writes, results)
    for index, position in planned.of_event.items():
        event = kept[index]
        if results[position] is WriteOutcome.UNSERVED and isinstance(event, DocUnchanged):
            planned.resend[index] = event
    log.debug("embedded", n_embedded=n_embedded, n_texts=len(texts))
    return _outcomes(events, planned, results, out_stream, docs_stream)


async def _reusable(
    kept: Mapping[int, ChunkEvent],
    texts_of: Mapping[int, Sequence[str]],
    store: Store,
    embedder: Embedder,
    recent: RecentVectors,
    *,
    copies: bool,
) -> tuple[Served, dict[str, Vector], int]:
    """The batch's fences (and the served rows it needs), the vectors its chunked docs can
    reuse (embedding text → vector), and how many texts it embedded on the way.

    The rows of a chunked doc whose served rows this writer last wrote or read (`recent`) are
    not read: its texts those rows lack are embedded while the fences load, and its cached
    vectors are used if its fence still serves those rows (else its rows are read after all)."""
    upserts = [e.doc_id for e in kept.values() if not isinstance(e, DocDelete)]
    if not upserts:
        return Served({}, {}), {}, 0
    cached = {
        e.doc_id: (known, texts_of[i])
        for i, e in kept.items()
        if isinstance(e, ChunkedDoc) and (known := recent.get(e.doc_id)) is not None
    }
    rows = [e.doc_id for e in kept.values() if _reads_rows(e, copies) and e.doc_id not in cached]
    guess = list(
        dict.fromkeys(
            t for known, texts in cached.values() for t in texts if known.vector(t) is None
        )
    )
    served, guessed = await asyncio.gather(
        store.served(upserts, rows=rows), encode_async(embedder, guess) if guess else _none()
    )
    reusable: dict[str, Vector] = dict(
        zip(guess, guessed if guessed is not None else [], strict=True)
    )
    missed = []
    for doc_id, (known, texts) in cached.items():
        fence = served.fences.get(doc_id)
        if fence is not None and not fence.deleted and fence.rows == known.rows_version:
            reusable.update((t, v) for t in texts if (v := known.vector(t)) is not None)
        else:
            missed.append(doc_id)
    if missed:  # the index moved on since this writer saw these docs
        served = Served(served.fences, {**served.docs, **(await store.served(missed)).docs})
    reusable.update(known_vectors(served.docs))
    return served, reusable, len(guess)


async def _none() -> None:
    return None


def _remember(
    recent: RecentVectors,
    read: Iterable[UpsertDoc],
    writes: Sequence[DocWrite],
    results: Sequence[WriteOutcome],
) -> None:
    """Keep `recent` to what the index serves as far as this writer knows: the rows it read,
    then the versions it wrote (an advance serves the rows it names: nothing changes)."""
    for doc in read:
        recent.put(doc.doc_id, doc.version, [_text(c) for c in doc.chunks], doc.vectors)
    for write, result in zip(writes, results, strict=True):
        if result is not WriteOutcome.APPLIED:
            continue
        if isinstance(write, UpsertDoc):
            recent.put(write.doc_id, write.version, [_text(c) for c in write.chunks], write.vectors)
        elif isinstance(write, DeleteDoc):
            recent.forget(write.doc_id)


def _outcomes(
    events: Sequence[ChunkEvent],
    planned: _Writes,
    results: Sequence[WriteOutcome],
    out_stream: str,
    docs_stream: str,
) -> list[Outcome]:
    """Each event's ack (or, for an unchanged doc the index moved on from, its resend). An
    unchanged doc is logged at debug level and counted in one line per batch: a re-sync of a
    million unchanged docs is a million no-ops."""
    indexed_at = utcnow()
    outcomes: list[Outcome] = []
    unchanged = 0
    for index, event in enumerate(events):
        if index in planned.resend:
            log.info("index moved on, chunking after all", doc_id=event.doc_id)
            forced = planned.resend[index].doc.model_copy(update={"force": True})
            outcomes.append([Publication(docs_stream, forced)])
            continue
        position = planned.of_event.get(index)
        if position is None:  # an older event of a doc the batch writes a newer one of
            ack = _ack(event, WriteOutcome.STALE, 0, indexed_at)
        else:
            ack = _ack(event, results[position], planned.n_chunks[position], indexed_at)
        unchanged += ack.outcome is IndexOutcome.UNCHANGED
        (log.debug if ack.outcome is IndexOutcome.UNCHANGED else log.info)(
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
    if unchanged:
        log.info("unchanged docs advanced", n_docs=unchanged)
    return outcomes


def _served_chunks(event: DocUnchanged, served: Served) -> int:
    """How many chunks the version `event` advances on has (the chunker said, or the rows)."""
    if event.n_chunks is not None:
        return event.n_chunks
    doc = served.docs.get(event.doc_id)
    return 0 if doc is None else len(doc.chunks)


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
