"""What the chunker publishes on the chunks stream (`rag.chunks`)."""

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, TypeAdapter

from shared.contracts.base import Event
from shared.contracts.docs import DocDelete, DocId, DocUpsert, DocVersion

_CHUNK_NAMESPACE = uuid.UUID("6f0c2a52-7d1e-4b8e-9a51-2f4e3f7f6a10")


def chunk_id(doc_id: str, ordinal: int, chunk_hash: str) -> str:
    """Deterministic chunk identity: a replay of the same event yields the same ids."""
    return str(uuid.uuid5(_CHUNK_NAMESPACE, f"{doc_id}\x00{ordinal}\x00{chunk_hash}"))


class Chunk(BaseModel):
    """One retrievable piece of a document, with its place in the original text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chunk_id: str
    ordinal: Annotated[int, Field(ge=0)]
    text: str
    char_start: Annotated[int, Field(ge=0)]
    char_end: Annotated[int, Field(ge=0)]
    section_path: tuple[str, ...] = ()
    n_tokens: Annotated[int, Field(ge=0)]


class ChunkedDoc(Event):
    """A document version's complete, ordered chunk list."""

    type: Literal["chunked"] = "chunked"
    doc_id: DocId
    version: DocVersion
    title: str
    source: str
    metadata: dict[str, JsonValue]
    content_hash: str
    doc_emitted_at: datetime
    chunks: tuple[Chunk, ...]
    fingerprint: str = ""
    """Hash of everything the index rows are made from (content, title, metadata, source and
    the chunker's configuration): an upsert with the same fingerprint needs no new rows."""


class DocUnchanged(Event):
    """An upsert whose fingerprint equals that of `indexed_version`, the version the index
    serves: the new version reuses that version's chunks and vectors, with no chunking or
    embedding. If the index has moved on by the time the embedder sees it, `doc` goes back to
    the docs stream with `force` set, to be chunked after all."""

    type: Literal["unchanged"] = "unchanged"
    doc_id: DocId
    version: DocVersion
    indexed_version: DocVersion
    fingerprint: str
    doc_emitted_at: datetime
    doc: DocUpsert
    n_chunks: Annotated[int, Field(ge=0)] | None = None
    """How many chunks `indexed_version` is served with (for the ack); None from a chunker that
    did not say, and the embedder then counts the served rows."""


class DocReindex(Event):
    """Copy `doc_id`, as the serving index generation serves it when the embedder gets to it,
    into generation `table`, embedded by that generation's model (`ragstream reindex`)."""

    type: Literal["reindex"] = "reindex"
    doc_id: DocId
    version: DocVersion
    """The version the reindex saw (for logs: the copy is of whatever is served then)."""
    table: str


ChunkEvent = Annotated[
    ChunkedDoc | DocUnchanged | DocDelete | DocReindex, Field(discriminator="type")
]
CHUNK_EVENT: TypeAdapter[ChunkedDoc | DocUnchanged | DocDelete | DocReindex] = TypeAdapter(
    ChunkEvent
)
