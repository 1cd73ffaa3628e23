"""Doc-change events in, chunk events out: the chunker stage's logic, without a broker."""

import asyncio
from collections.abc import Sequence

import structlog

from services.chunker.chunking import Chunker
from shared.contracts import ChunkedDoc, DocDelete, DocUpsert
from shared.errors import PermanentError
from shared.stage import Outcome, Publication

log = structlog.get_logger("ragstream.chunker")


def chunk_event(
    event: DocUpsert | DocDelete, chunker: Chunker, max_chunks: int
) -> ChunkedDoc | DocDelete:
    """An upsert becomes its version's complete chunk list; a delete passes through unchanged."""
    if isinstance(event, DocDelete):
        return event
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
    )


def chunk_batch(
    events: Sequence[DocUpsert | DocDelete], chunker: Chunker, max_chunks: int, out_stream: str
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for event in events:
        with structlog.contextvars.bound_contextvars(
            event_id=str(event.event_id), doc_id=event.doc_id, version=event.version
        ):
            try:
                chunked = chunk_event(event, chunker, max_chunks)
            except PermanentError as exc:
                outcomes.append(exc)
                continue
            n_chunks = len(chunked.chunks) if isinstance(chunked, ChunkedDoc) else 0
            log.info("chunked", kind=event.type, n_chunks=n_chunks)
            outcomes.append([Publication(out_stream, chunked)])
    return outcomes


async def chunk_batch_async(
    events: Sequence[DocUpsert | DocDelete], chunker: Chunker, max_chunks: int, out_stream: str
) -> list[Outcome]:
    """Chunk in a worker thread so a large document does not stall the event loop."""
    return await asyncio.to_thread(chunk_batch, events, chunker, max_chunks, out_stream)
