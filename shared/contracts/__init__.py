"""Event contracts, one module each. Every stage imports them from here; none redefines them."""

from shared.contracts.answers import Answer, AnswerDelta, AnswerInvalidated, Citation, Usage
from shared.contracts.base import SCHEMA_VERSION, Event
from shared.contracts.chunks import (
    CHUNK_EVENT,
    Chunk,
    ChunkedDoc,
    DocReindex,
    DocUnchanged,
    chunk_id,
)
from shared.contracts.dead_letter import DeadLetter
from shared.contracts.docs import DOC_EVENT, DocDelete, DocUpsert, content_hash
from shared.contracts.indexed import DocIndexed, IndexOutcome
from shared.contracts.queries import Candidate, Query, Reranked, Retrieved, StageTimings

__all__ = [
    "CHUNK_EVENT",
    "DOC_EVENT",
    "SCHEMA_VERSION",
    "Answer",
    "AnswerDelta",
    "AnswerInvalidated",
    "Candidate",
    "Chunk",
    "ChunkedDoc",
    "Citation",
    "DeadLetter",
    "DocDelete",
    "DocIndexed",
    "DocReindex",
    "DocUnchanged",
    "DocUpsert",
    "Event",
    "IndexOutcome",
    "Query",
    "Reranked",
    "Retrieved",
    "StageTimings",
    "Usage",
    "chunk_id",
    "content_hash",
]
