"""Freshness acknowledgements the embedder publishes on the indexed stream (`rag.indexed`)."""

from datetime import datetime
from enum import StrEnum
from typing import Literal

from shared.contracts.base import Event
from shared.contracts.docs import DocId, DocVersion


class IndexOutcome(StrEnum):
    INDEXED = "indexed"
    DELETED = "deleted"
    UNCHANGED = "unchanged"
    """Same content as the version the index served: it now serves it as this version, with the
    same chunks and vectors (nothing was chunked or embedded)."""
    STALE = "stale"
    """An older version than the index holds: dropped, the index is unchanged."""


class DocIndexed(Event):
    """Doc `doc_id` at `version` is now what the index serves (or was stale and dropped)."""

    type: Literal["indexed"] = "indexed"
    doc_id: DocId
    version: DocVersion
    outcome: IndexOutcome
    n_chunks: int
    doc_emitted_at: datetime
    indexed_at: datetime
    fingerprint: str = ""
    """The indexed content's fingerprint (`ChunkedDoc.fingerprint`); empty for deletes."""

    @property
    def freshness_ms(self) -> float:
        return (self.indexed_at - self.doc_emitted_at).total_seconds() * 1000
