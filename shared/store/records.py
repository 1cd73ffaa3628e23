"""Plain values that cross the Store port: what is written, what a search asks and returns."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """A chunk as the index stores it (everything but the vector)."""

    chunk_id: str
    doc_id: str
    version: int
    ordinal: int
    title: str
    text: str
    section_path: tuple[str, ...]
    char_start: int
    char_end: int
    source: str = ""


@dataclass(frozen=True, slots=True)
class UpsertDoc:
    """Make `version` of `doc_id` the served one: exactly these chunks, nothing older."""

    doc_id: str
    version: int
    chunks: Sequence[ChunkRecord]
    vectors: Vector
    """One normalised row per chunk, in the same order."""


@dataclass(frozen=True, slots=True)
class DeleteDoc:
    """Remove `doc_id` and keep a tombstone at `version`, so older upserts stay dropped."""

    doc_id: str
    version: int


DocWrite = UpsertDoc | DeleteDoc


class WriteOutcome(StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    """Older than (or, for deletes, equal to) what the index already holds; nothing changed."""


@dataclass(frozen=True, slots=True)
class DocState:
    doc_id: str
    version: int
    deleted: bool


FusionMethod = Literal["zscore", "rrf", "minmax"]
SearchMode = Literal["hybrid", "dense", "bm25"]


@dataclass(frozen=True, slots=True)
class SearchRequest:
    text: str
    vector: Vector | None
    k: int = 20
    mode: SearchMode = "hybrid"
    fusion: FusionMethod = "zscore"
    alpha: float = 0.5
    """Weight of the dense list in score fusion; 1 - alpha goes to BM25."""
    candidates: int = 100
    """How deep each list (dense, BM25) is read before fusion."""
    filters: Mapping[str, str] = field(default_factory=dict)
    """Exact-match filters on `doc_id` or `source`."""


@dataclass(frozen=True, slots=True)
class Hit:
    chunk: ChunkRecord
    score: float
    dense_score: float | None = None
    bm25_score: float | None = None
