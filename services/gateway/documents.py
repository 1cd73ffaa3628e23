"""Doc changes over HTTP: the `DocUpsert` / `DocDelete` contracts, published on the docs stream;
what the index serves is read back from the embedder's per-doc state (`shared.doc_state`)."""

import time

from redis.asyncio import Redis

from services.gateway.models import DocumentRequest
from services.gateway.publishing import publish
from shared.contracts import DocDelete, DocUpsert
from shared.settings import StreamSettings


class VersionClock:
    """Default versions, as `ragstream ingest` picks them: Unix milliseconds, here also strictly
    increasing within the process, so two changes to a doc in one millisecond stay ordered."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(time.time_ns() // 1_000_000, self._last + 1)
        return self._last


def upsert_event(request: DocumentRequest, clock: VersionClock) -> DocUpsert:
    return DocUpsert(
        doc_id=request.doc_id,
        version=request.version if request.version is not None else clock.next(),
        title=request.title,
        text=request.text,
        metadata=request.metadata,
        source=request.source,
    )


def delete_event(doc_id: str, version: int | None, clock: VersionClock) -> DocDelete:
    return DocDelete(doc_id=doc_id, version=version if version is not None else clock.next())


async def publish_change(
    redis: Redis, streams: StreamSettings, event: DocUpsert | DocDelete
) -> None:
    await publish(
        redis, streams.docs, event,
        maxlen=streams.maxlen, span=f"gateway {event.type}", doc_id=event.doc_id,
    )  # fmt: skip
