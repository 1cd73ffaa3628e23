"""Doc-change events that upstream systems publish on the docs stream (`rag.docs`)."""

import hashlib
from typing import Annotated, Literal

from pydantic import Field, JsonValue, TypeAdapter

from shared.contracts.base import Event, non_blank

DocId = Annotated[str, Field(min_length=1, max_length=512)]
DocVersion = Annotated[int, Field(ge=0)]


def content_hash(title: str, text: str) -> str:
    """Stable hash of what a document says; part of every chunk id."""
    return hashlib.sha256(f"{title}\x00{text}".encode()).hexdigest()


class DocUpsert(Event):
    """Create or replace a document. Version `v` replaces every chunk of older versions."""

    type: Literal["upsert"] = "upsert"
    doc_id: DocId
    version: DocVersion
    title: str = ""
    text: Annotated[str, non_blank("document text")]
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    source: str = ""
    force: bool = False
    """Chunk and embed it even if the index already serves this exact content (normally such
    an upsert only moves the doc's version forward, reusing the indexed chunks and vectors)."""

    @property
    def content_hash(self) -> str:
        return content_hash(self.title, self.text)


class DocDelete(Event):
    """Remove a document. Versioned: a delete at v5 beats an upsert at v4 that arrives later."""

    type: Literal["delete"] = "delete"
    doc_id: DocId
    version: DocVersion


DocEvent = Annotated[DocUpsert | DocDelete, Field(discriminator="type")]
DOC_EVENT: TypeAdapter[DocUpsert | DocDelete] = TypeAdapter(DocEvent)
