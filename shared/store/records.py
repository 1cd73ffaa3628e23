"""Plain values that cross the Store port: what is written, what a search asks and returns."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
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
    tags: tuple[str, ...] = ()
    """The doc's scalar metadata as ``key=value`` strings, for `metadata.<key>` filters."""

    @property
    def row_id(self) -> str:
        """The row's key in the index: rows of different versions never overwrite each other."""
        return f"{self.chunk_id}@{self.version}"

    def at(self, version: int) -> "ChunkRecord":
        """This chunk as a chunk of `version` (a version served on older rows, or copied)."""
        return self if version == self.version else replace(self, version=version)


@dataclass(frozen=True, slots=True)
class UpsertDoc:
    """Make `version` of `doc_id` the served one: exactly these chunks, nothing older."""

    doc_id: str
    version: int
    chunks: Sequence[ChunkRecord]
    vectors: Vector
    """One normalised row per chunk, in the same order."""

    def at(self, version: int) -> "UpsertDoc":
        """The same rows and vectors as `version`."""
        if version == self.version:
            return self
        return UpsertDoc(self.doc_id, version, [c.at(version) for c in self.chunks], self.vectors)


@dataclass(frozen=True, slots=True)
class DeleteDoc:
    """Remove `doc_id` and keep a tombstone at `version`, so older upserts stay dropped."""

    doc_id: str
    version: int


@dataclass(frozen=True, slots=True)
class AdvanceDoc:
    """Make `version` of `doc_id` the served one on the rows of `rows_version`, which the index
    serves now (as `Store.served` read its fence; the doc did not change): one fence marker, no
    rows copied. Where the index no longer serves those rows (another version committed in
    between; see `VersionedStore.apply`), the outcome is `WriteOutcome.UNSERVED`."""

    doc_id: str
    version: int
    rows_version: int


DocWrite = UpsertDoc | DeleteDoc | AdvanceDoc


class WriteOutcome(StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    """Older than (or, for deletes, equal to) what the index already holds; nothing changed."""
    UNSERVED = "unserved"
    """An advance whose rows the index no longer serves: the version needs rows of its own
    (until they are written, the doc can be missing from answers if its marker went in)."""


@dataclass(frozen=True, slots=True)
class DocState:
    doc_id: str
    version: int
    deleted: bool
    rows_version: int | None = None
    """Set when `version` serves the rows of an older version (an `AdvanceDoc`)."""

    @property
    def rows(self) -> int:
        """The version whose rows this version serves."""
        return self.version if self.rows_version is None else self.rows_version

    @property
    def order(self) -> tuple[int, bool, int]:
        """Markers of a doc rank by version; at one version a tombstone beats an upsert, and
        rows of the version itself beat an advance naming older rows."""
        return (self.version, self.deleted, self.rows)

    @property
    def marker_id(self) -> str:
        """The key of this fence marker in the index (`~` marks a tombstone, `<N` an advance
        serving version N's rows)."""
        advance = "" if self.rows_version is None else f"<{self.rows_version}"
        return f"{self.doc_id}@{self.version}{'~' if self.deleted else ''}{advance}"


def read_marker(doc_id: str, version: int, deleted: bool, rows_version: int | None) -> DocState:
    """A marker as an index stores it (markers written before advances existed, or by an
    upsert, store no rows version or their own)."""
    rows = None if rows_version is None or rows_version == version else rows_version
    return DocState(doc_id, version, deleted, rows)


@dataclass(frozen=True, slots=True)
class Served:
    """What a store's `served` read: each doc's fence (None: the index never had it), and each
    live doc's served rows, as stored: of the fence's `DocState.rows` version, older than the
    fence's own after an advance (`UpsertDoc.at` relabels them)."""

    fences: dict[str, DocState | None]
    docs: dict[str, UpsertDoc]


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
    """Exact-match filters, all of which must hold: `doc_id`, `source` or `metadata.<key>`."""


@dataclass(frozen=True, slots=True)
class Hit:
    chunk: ChunkRecord
    score: float
    dense_score: float | None = None
    bm25_score: float | None = None


FILTER_FIELDS = frozenset({"doc_id", "source"})
METADATA_PREFIX = "metadata."


def check_filters(filters: Mapping[str, str]) -> None:
    """Refuse a filter on anything but `doc_id`, `source` or `metadata.<key>`."""
    unknown = sorted(
        key for key in filters
        if key not in FILTER_FIELDS
        and not (key.startswith(METADATA_PREFIX) and len(key) > len(METADATA_PREFIX))
    )  # fmt: skip
    if unknown:
        raise ValueError(f"cannot filter on {unknown}; only on doc_id, source or metadata.<key>")


def tag(key: str, value: str) -> str:
    """The tag a metadata filter matches: `metadata.lang = en` matches the tag `lang=en`."""
    return f"{key}={value}"


def metadata_tags(metadata: Mapping[str, object]) -> tuple[str, ...]:
    """Tags of a doc's scalar metadata values (strings, numbers, booleans as JSON spells them)."""
    tags = []
    for key, value in sorted(metadata.items()):
        if isinstance(value, bool):
            tags.append(tag(key, "true" if value else "false"))
        elif isinstance(value, str | int | float):
            tags.append(tag(key, str(value)))
    return tuple(tags)


def split_filters(filters: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """Field filters (`doc_id`, `source`) and the tags the metadata filters require."""
    fields = {k: v for k, v in filters.items() if k in FILTER_FIELDS}
    tags = [
        tag(k.removeprefix(METADATA_PREFIX), v)
        for k, v in sorted(filters.items())
        if k.startswith(METADATA_PREFIX)
    ]
    return fields, tags
