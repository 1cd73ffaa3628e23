"""Doc-change events in, chunk events out: the chunker stage's logic, without a broker."""

import asyncio
import hashlib
import json
from collections.abc import Sequence
from functools import partial

import structlog
from redis.asyncio import Redis

from services.chunker.chunking import Chunker
from shared import doc_state
from shared.contracts import ChunkedDoc, DocDelete, DocUnchanged, DocUpsert
from shared.errors import PermanentError
from shared.stage import Outcome, Publication

log = structlog.get_logger("ragstream.chunker")


def fingerprint(doc: DocUpsert, chunker: Chunker) -> str:
    """Hash of everything a doc's index rows are made from, the chunker's rules included."""
    parts = [chunker.config_id, doc.content_hash, doc.source, doc.metadata]
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def chunk_event(
    event: DocUpsert | DocDelete,
    chunker: Chunker,
    max_chunks: int,
    indexed: doc_state.DocState | None = None,
) -> ChunkedDoc | DocUnchanged | DocDelete:
    """An upsert becomes its version's complete chunk list, or `DocUnchanged` when `indexed`
    (what the index serves) was made from the same fingerprint; a delete passes through."""
    if isinstance(event, DocDelete):
        return event
    made_from = fingerprint(event, chunker)
    if (
        indexed is not None
        and not event.force
        and not indexed.deleted
        and indexed.fingerprint == made_from
        and indexed.version < event.version
    ):
        return DocUnchanged(
            doc_id=event.doc_id,
            version=event.version,
            indexed_version=indexed.version,
            fingerprint=made_from,
            doc_emitted_at=event.emitted_at,
            doc=event,
            n_chunks=indexed.n_chunks,
        )
    chunks = chunker.chunk(event)
    if len(chunks) > max_chunks:
        raise PermanentError(
            f"document chunks into {len(chunks):,} chunks, over the {max_chunks:,}-chunk limit"
        )
    return ChunkedDoc(
        doc_id=event.doc_id,
        version=event.version,
        title=event.title,
        source=event.source,
        metadata=event.metadata,
        content_hash=event.content_hash,
        doc_emitted_at=event.emitted_at,
        chunks=chunks,
        fingerprint=made_from,
    )


def chunk_batch(
    events: Sequence[DocUpsert | DocDelete],
    *,
    chunker: Chunker,
    max_chunks: int,
    out_stream: str,
    indexed: Sequence[doc_state.DocState | None] | None = None,
) -> list[Outcome]:
    """Chunk each event; ``indexed[i]`` is what the index serves of event i's doc, if known.
    An unchanged doc is logged at debug level, and counted in one line per batch."""
    outcomes: list[Outcome] = []
    unchanged = 0
    for i, event in enumerate(events):
        with structlog.contextvars.bound_contextvars(
            event_id=str(event.event_id), doc_id=event.doc_id, version=event.version
        ):
            try:
                chunked = chunk_event(event, chunker, max_chunks, indexed[i] if indexed else None)
            except PermanentError as exc:
                outcomes.append(exc)
                continue
            if isinstance(chunked, DocUnchanged):
                unchanged += 1
                log.debug("unchanged", kind=event.type, indexed_version=chunked.indexed_version)
            else:
                n_chunks = len(chunked.chunks) if isinstance(chunked, ChunkedDoc) else 0
                log.info("chunked", kind=event.type, n_chunks=n_chunks)
            outcomes.append([Publication(out_stream, chunked)])
    if unchanged:
        log.info("unchanged docs", n_docs=unchanged)
    return outcomes


async def chunk_batch_async(
    events: Sequence[DocUpsert | DocDelete],
    *,
    chunker: Chunker,
    max_chunks: int,
    out_stream: str,
    redis: Redis,
    indexed_stream: str,
) -> list[Outcome]:
    """Look up what the index serves of the batch's docs (one Redis round trip), then chunk in
    a worker thread so a large document does not stall the event loop."""
    indexed = await doc_state.read_many(redis, indexed_stream, [e.doc_id for e in events])
    return await asyncio.to_thread(
        partial(chunk_batch, events, chunker=chunker, max_chunks=max_chunks),
        out_stream=out_stream,
        indexed=indexed,
    )
