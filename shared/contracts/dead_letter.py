"""Dead letters: entries a stage could not process, with the reason, on `rag.dlq`."""

from typing import Literal

from shared.contracts.base import Event


class DeadLetter(Event):
    """Why an entry was dead-lettered. The original payload travels beside it, byte for byte."""

    type: Literal["dead_letter"] = "dead_letter"
    stage: str
    source_stream: str
    entry_id: str
    reason: str
    deliveries: int = 1
    doc_id: str | None = None
    """The subject of the entry, when the payload was readable enough to tell."""
    version: int | None = None
    query_id: str | None = None
