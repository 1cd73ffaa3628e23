"""The Store port every index adapter implements (LanceDB embedded, Weaviate in production)."""

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from shared.store.records import DocState, DocWrite, Hit, SearchRequest, Served, WriteOutcome


class Store(Protocol):
    async def apply(
        self,
        writes: Sequence[DocWrite],
        *,
        fences: Mapping[str, DocState | None] | None = None,
        prune: bool = True,
    ) -> list[WriteOutcome]:
        """Apply a batch of versioned writes; one outcome per write, in order. `fences` and
        `prune`: see `VersionedStore.apply`.

        Guarantees (`shared.store.versioning` says how): a reader sees all of a doc's old
        version or all of its new one, never a mix or a subset; a failure midway leaves the old
        version served and a replay heals it; writes older than the doc's current version or
        tombstone are dropped; replaying a write changes nothing; concurrent writers converge
        on the newest version with no orphaned chunks. A malformed write is a `PermanentError`
        (nothing is written), an unavailable index a `TransientError`.
        """
        ...

    async def hybrid_search(self, request: SearchRequest) -> list[Hit]: ...

    async def current_version(self, doc_id: str) -> DocState | None: ...

    async def fences(self, doc_ids: Collection[str]) -> dict[str, DocState]:
        """The version (or tombstone) each known doc is at; unknown docs are left out."""
        ...

    async def served(
        self, doc_ids: Collection[str], *, rows: Collection[str] | None = None
    ) -> Served:
        """The docs' fences and the served rows, with their vectors, of each live doc of `rows`
        (default: all; to reuse vectors and to pass the fences on to `apply`)."""
        ...

    async def prune(self) -> None:
        """Remove rows and markers that applies with ``prune=False`` left below the fences."""
        ...

    async def count_chunks(self, doc_id: str | None = None) -> int: ...

    async def optimize(self, *, min_new_versions: int = 0) -> None:
        """Compact and refresh indexes; the writer calls it periodically. With
        `min_new_versions`, only once that many writes have piled up since the last run."""
        ...

    async def drop(self) -> None:
        """Delete the whole index (a retired generation)."""
        ...

    async def close(self) -> None: ...
