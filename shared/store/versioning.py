"""The one commit protocol of every index: immutable versioned rows, grow-only fences, prune last.

Both adapters (LanceDB, Weaviate) implement the small `VersionedIndex` port below; the `Store`
contract (`VersionedStore`) is built on it once, so the two backends cannot drift apart.

**Rows never overwrite each other.** A chunk row is keyed by ``(chunk_id, version)``: a chunk that
is unchanged between v1 and v2 has the same ``chunk_id`` but gets a second row for v2, and the v1
row stays until v1 is pruned. (Keying rows on ``chunk_id`` alone let the v2 write overwrite the
v1 row while v1 was still the served version, so the doc was served without its unchanged
chunks until the fence advanced, and for good if the writer died in between.)

**The fence is a grow-only set of markers.** A doc's served version is the greatest of its
markers ``(doc_id, version, deleted)``, ordered by ``(version, deleted)`` so that a delete beats
an upsert of the same version. Writers only *insert* markers (idempotently, under a deterministic
key) and only ever delete markers strictly below the greatest one, so the maximum only moves
forward whatever order concurrent writers on different replicas commit in. This is why the
fence lives in the index and not in Redis: it needs no conditional update (which Weaviate does
not have) and no second system in the read path, and it commits in the same store as the rows
it fences. With replicated Weaviate, markers are written and read at consistency QUORUM.

**A reader sees all of one version, never a mix or a subset.** A row is served only if its
version equals its doc's fence's rows (its own, unless an advance, below) and the fence is not a
tombstone. `apply` commits in this order:

1. read the fences of the batch's docs; plan (drop writes older than them as STALE);
2. insert every row of the new versions (all of them must succeed before step 3);
3. insert the new markers — the commit point: the doc switches to its new version at once;
4. re-read the fences; delete the rows below each fence but those it serves (at or below a
   tombstone) and, where the read showed any, the markers below it (garbage only: they never
   decide anything, so leaving some behind is harmless and the doc's next write removes them).
   A fence that is an advance, with every marker below it naming its rows, frees no rows: the
   row delete is skipped (it is most of an unchanged re-sync's index work).

**An unchanged doc advances without copying rows.** An `AdvanceDoc` inserts only a marker
``(doc_id, version, rows_version)``: the new version serves the rows of the version the index
served when the writer read the fence. Readers and prunes go by the fence's rows
(`DocState.rows`), and at one version an advance ranks below the version's own rows. An
advance's rows can be pruned before its marker is in, by the writer of a version between them
that read its fence before the advance's marker; such a writer's marker is in before the
advance's writer re-reads the markers, so that re-read finds it and the advance is reported
`UNSERVED` (`VersionedStore._lost`): its caller writes the version's own rows, which outrank
the advance. Until then — a race of two versions of one doc committed out of order — that doc
can be missing from answers.

A crash between any two steps leaves the old version whole and served (step 2's rows are
invisible without their marker; step 3's leftovers are invisible below the new fence); the
redelivered event replays every step and heals it. No orphan survives convergence: a row ``r``
of an older version is committed before its writer ``W`` prunes; if ``W``'s fence read already
sees the final fence ``F``, ``W`` deletes ``r``; if not, ``F``'s marker was inserted after that
read, hence after ``r``, and the writer of ``F`` prunes after its marker and deletes ``r`` —
or, if ``F`` is an advance (which skips the row delete), the writer of the doc's next version
with rows of its own does. Such a row is invisible meanwhile: no marker names it.

A search reads its candidate lists first and the fences of the docs in them after: a prune
only starts once a newer marker is visible, so a reader that still sees the old fence saw all
the old rows. Where a batch of rows becomes visible at once (LanceDB commits), a reader that sees
the new fence saw all the new rows too. Where it does not (Weaviate inserts object by object), a
version's marker is inserted `settle_s` after its rows, and a read that took longer than that
is redone and keeps only the docs whose fence did not move (`VersionedStore._settled`). A doc
whose new marker lands between the list read and the fence read would be missing from the
answer (its lists held only the old rows, its fence names the new ones), so such a read is
redone too: the lists read again after that fence read hold the new rows. Only a doc that moves
on again within the second read can be missing from an answer; none is ever shown half-updated.
"""

import asyncio
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from shared.errors import PermanentError
from shared.store.fusion import fuse
from shared.store.records import (
    AdvanceDoc,
    ChunkRecord,
    DeleteDoc,
    DocState,
    DocWrite,
    Hit,
    SearchRequest,
    Served,
    UpsertDoc,
    WriteOutcome,
    check_filters,
)

Scored = list[tuple[ChunkRecord, float]]


@dataclass(frozen=True, slots=True)
class Candidates:
    """What one search reads from an index, before fences are applied."""

    dense: Scored
    """(row, cosine similarity), best first; empty unless the mode reads dense."""
    bm25: Scored
    """(row, BM25 score), best first; empty unless the mode reads BM25."""
    fused: Scored | None = None
    """(row, fused score) when the index fused the lists itself (Weaviate's native hybrid)."""


class VersionedIndex(Protocol):
    """What a backend provides. Every write is idempotent as its reads see it; none is
    conditional."""

    dim: int
    settle_s: float
    """0 where a batch of rows becomes visible at once (LanceDB commits); else how long after
    its rows a version's fence is inserted (see `VersionedStore._settled`)."""

    async def open(self) -> None:
        """Create or open the collections (idempotent, safe across processes)."""
        ...

    async def read_fences(self, doc_ids: Collection[str]) -> list[DocState]:
        """Every fence marker of these docs (the greatest per doc is its fence)."""
        ...

    async def insert_rows(self, docs: Sequence[UpsertDoc]) -> None:
        """Insert the docs' rows under ``(chunk_id, version)``; raise unless all are stored. A
        row inserted again may be stored twice, if every read returns it once."""
        ...

    async def insert_fences(self, fences: Sequence[DocState]) -> None:
        """Insert markers under ``(doc_id, version, deleted)``; raise unless all are stored."""
        ...

    async def prune_rows(self, fences: Sequence[DocState]) -> None:
        """For each fence: delete its doc's rows below it (at or below, for a tombstone).
        Never touches anything newer."""
        ...

    async def delete_markers(self, markers: Sequence[DocState]) -> None:
        """Delete these markers, by key (each below its doc's fence: garbage, since the
        greatest decides)."""
        ...

    async def candidates(self, request: SearchRequest) -> Candidates:
        """Read the request's lists (``request.candidates`` deep), with its filters applied.
        Their rows may hold only ``chunk_id``, ``doc_id`` and ``version`` (see `complete`)."""
        ...

    async def complete(self, rows: Sequence[ChunkRecord]) -> list[ChunkRecord]:
        """The full rows of candidates `candidates` returned, in order (a search calls it for
        the few it keeps; an index whose lists hold full rows returns them as they are). A row
        pruned since (its doc moved on after the search read the fences) is left out."""
        ...

    async def read_rows(self, doc_ids: Collection[str]) -> list[UpsertDoc]:
        """The rows (with vectors, in ordinal order) of these docs, one `UpsertDoc` per doc
        version the index holds."""
        ...

    async def count_rows(self, doc_id: str | None = None) -> int: ...

    async def optimize(self, *, min_new_versions: int = 0) -> None: ...

    async def drop(self) -> None:
        """Delete the index's collections or tables, rows and markers (and close it)."""
        ...

    async def close(self) -> None: ...


def fence_of(markers: Iterable[DocState]) -> dict[str, DocState]:
    """The greatest marker of each doc, by `DocState.order`."""
    fences: dict[str, DocState] = {}
    for marker in markers:
        current = fences.get(marker.doc_id)
        if current is None or marker.order > current.order:
            fences[marker.doc_id] = marker
    return fences


def marker_of(write: DocWrite) -> DocState:
    """The fence marker that commits `write`."""
    if isinstance(write, AdvanceDoc):
        return DocState(write.doc_id, write.version, False, write.rows_version)
    return DocState(write.doc_id, write.version, isinstance(write, DeleteDoc))


def plan(
    writes: Sequence[DocWrite], fences: Mapping[str, DocState]
) -> tuple[list[WriteOutcome], dict[str, DocWrite]]:
    """Outcome of each write, in order, and the last applied write of each doc (its winner).

    An upsert is stale below the fence or at/below a tombstone; a delete at/below the fence.
    An equal-version upsert replay is APPLIED (and changes nothing). An advance past a fence
    that does not serve its rows (the doc moved on since the caller read it) is UNSERVED.
    """
    current = dict(fences)
    outcomes: list[WriteOutcome] = []
    winners: dict[str, DocWrite] = {}
    for write in writes:
        fence = current.get(write.doc_id)
        deleting = isinstance(write, DeleteDoc)
        if fence is not None and (
            write.version < fence.version
            or (write.version == fence.version and (deleting or fence.deleted))
        ):
            outcomes.append(WriteOutcome.STALE)
        elif (
            isinstance(write, AdvanceDoc)
            and not _serves_rows_of(fence, write.rows_version)
            and (fence is None or fence.version < write.version)
        ):
            outcomes.append(WriteOutcome.UNSERVED)
        else:
            outcomes.append(WriteOutcome.APPLIED)
            current[write.doc_id] = marker_of(write)
            winners[write.doc_id] = write
    return outcomes, winners


def check_writes(writes: Sequence[DocWrite], dim: int) -> None:
    """Refuse a batch with a malformed upsert before anything is written."""
    seen: set[tuple[str, int]] = set()
    for write in writes:
        if isinstance(write, AdvanceDoc) and not write.rows_version < write.version:
            raise PermanentError(
                f"{write.doc_id}@{write.version}: an advance must be on older rows, "
                f"not on those of version {write.rows_version}"
            )
        if not isinstance(write, UpsertDoc) or not write.chunks:
            continue
        matrix = np.asarray(write.vectors, dtype=np.float32)
        if matrix.shape != (len(write.chunks), dim) or not np.isfinite(matrix).all():
            raise PermanentError(
                f"{write.doc_id}@{write.version}: vectors of shape {matrix.shape} for "
                f"{len(write.chunks)} chunks of dim {dim}, or not finite"
            )
        for chunk in write.chunks:
            if (chunk.doc_id, chunk.version) != (write.doc_id, write.version):
                raise PermanentError(
                    f"{chunk.chunk_id} is not a chunk of {write.doc_id}@{write.version}"
                )
            key = (chunk.chunk_id, chunk.version)
            if key in seen:
                raise PermanentError(f"chunk id {chunk.chunk_id} repeated in one batch")
            seen.add(key)


class VersionedStore:
    """The `Store` port on any `VersionedIndex`: the commit protocol and fenced reads."""

    def __init__(self, index: VersionedIndex) -> None:
        self.index = index
        self._unpruned: set[str] = set()
        """Docs written with ``prune=False`` and not pruned since (see `prune`)."""

    @property
    def dim(self) -> int:
        return self.index.dim

    async def open(self) -> None:
        await self.index.open()

    async def fences(self, doc_ids: Collection[str]) -> dict[str, DocState]:
        return fence_of(await self.index.read_fences(doc_ids)) if doc_ids else {}

    async def apply(
        self,
        writes: Sequence[DocWrite],
        *,
        fences: Mapping[str, DocState | None] | None = None,
        prune: bool = True,
    ) -> list[WriteOutcome]:
        """Apply a batch: insert rows, insert markers, then prune (rows and stale markers at
        once). Outcomes in the order of `writes`.

        `fences`: the batch's fences as the caller read them just before (`served`), to save
        the first read. Any earlier read is safe: `plan` drops writes below it, and a write
        below a fence the read missed only adds rows and a marker no reader serves, which the
        prune removes. ``prune=False`` leaves the prune to the next `prune` call: readers see
        the same either way (rows below a fence are never served), the commit is two index
        writes shorter, and one `prune` covers many applies.
        """
        if not writes:
            return []
        check_writes(writes, self.dim)
        doc_ids = list(dict.fromkeys(w.doc_id for w in writes))
        if fences is not None and all(d in fences for d in doc_ids):
            before = {d: f for d, f in fences.items() if f is not None}
        else:
            before = await self.fences(doc_ids)
        outcomes, winners = plan(writes, before)
        new = [w for w in winners.values() if _newer(marker_of(w), before.get(w.doc_id))]
        await self._commit(new)
        if advances := [w for w in new if isinstance(w, AdvanceDoc)]:
            lost = await self._lost(advances)
            outcomes = [
                WriteOutcome.UNSERVED if w.doc_id in lost and w is winners[w.doc_id] else o
                for w, o in zip(writes, outcomes, strict=True)
            ]
        if prune:
            await self._prune(doc_ids)
        else:
            self._unpruned.update(doc_ids)
        return outcomes

    async def _commit(self, writes: Sequence[DocWrite]) -> None:
        """Steps 2 and 3: the rows, then the markers."""
        rows = [w for w in writes if isinstance(w, UpsertDoc) and w.chunks]
        if rows:
            await self.index.insert_rows(rows)
            if self.index.settle_s:  # see `_settled`: readers must not catch rows half-visible
                await asyncio.sleep(self.index.settle_s)
        if writes:
            await self.index.insert_fences([marker_of(w) for w in writes])

    async def _lost(self, advances: Sequence[AdvanceDoc]) -> set[str]:
        """The docs of the advances whose named rows may have been pruned before their marker
        was in: a marker between them and it that serves other rows (or none) was committed,
        and its writer prunes those rows if its fence read came before the advance's marker.
        The caller writes such a version's own rows, which outrank the advance
        (`DocState.order`). A writer that prunes after the advance's marker keeps its rows
        (`prune_rows`), and its marker came before this re-read, so no loss goes unseen."""
        by_doc = {a.doc_id: a for a in advances}
        markers = await self.index.read_fences(list(by_doc))
        return {m.doc_id for m in markers if _threatens(m, by_doc[m.doc_id])}

    async def prune(self) -> None:
        """Prune what applies with ``prune=False`` left (a writer calls it on a short timer
        and before closing). A failure keeps the docs for the next call."""
        if not self._unpruned:
            return
        doc_ids, self._unpruned = self._unpruned, set()
        try:
            await self._prune(list(doc_ids))
        except BaseException:
            self._unpruned |= doc_ids
            raise

    async def _prune(self, doc_ids: Sequence[str]) -> None:
        """Step 4 for these docs. A doc whose fence is an advance and whose markers all name
        the fence's rows has no rows to delete (see the module's docstring). The garbage markers
        go after the rows, so a failed row delete is retried on the evidence they give."""
        markers = await self.index.read_fences(doc_ids)
        after = fence_of(markers)
        freeing = {
            m.doc_id for m in markers
            if after[m.doc_id].rows_version is None or m.deleted or m.rows != after[m.doc_id].rows
        }  # fmt: skip
        if freeing:
            await self.index.prune_rows([after[d] for d in freeing])
        if garbage := [m for m in markers if m != after[m.doc_id]]:
            await self.index.delete_markers(garbage)

    async def hybrid_search(self, request: SearchRequest) -> list[Hit]:
        """Read the lists, keep the rows of each doc's fenced version, fuse (unless the index
        fused them). ``Hit.score`` is the fused score in hybrid mode, the cosine similarity in
        dense mode and the BM25 score in bm25 mode.

        The fence read and the read of the full rows overlap: while the fences load, the rows
        that rank best before fencing are completed. Fencing drops at most the rows of docs
        that moved on, so those are nearly always the rows kept; any kept row they miss is
        completed after."""
        check_filters(request.filters)
        wants_dense = request.mode in ("dense", "hybrid")
        if wants_dense and (request.vector is None or request.vector.shape != (self.dim,)):
            raise ValueError(f"mode {request.mode!r} needs a query vector of dim {self.dim}")
        started = time.monotonic()
        found = await self.index.candidates(request)
        likely = _ranked(request, found, None)[: 2 * request.k]
        fences, early = await asyncio.gather(
            self.fences(_docs_of(found)), self.index.complete([h.chunk for h in likely])
        )
        found, fences = await self._settled(request, started, found, fences)
        kept = _ranked(request, found, fences)[: request.k]
        rows = {row.row_id: row for row in early}
        if missing := [h.chunk for h in kept if h.chunk.row_id not in rows]:
            rows.update((row.row_id, row) for row in await self.index.complete(missing))
        return [
            Hit(
                rows[h.chunk.row_id].at(fences[h.chunk.doc_id].version),
                h.score,
                h.dense_score,
                h.bm25_score,
            )
            for h in kept
            if h.chunk.row_id in rows
        ]

    async def _settled(
        self,
        request: SearchRequest,
        started: float,
        found: Candidates,
        fences: dict[str, DocState],
    ) -> tuple[Candidates, dict[str, DocState]]:
        """The candidate lists and the fences that say which of their rows to serve.

        On an index whose row inserts are atomic (`settle_s == 0`), lists then fences. Where
        they are not (Weaviate), rows of a new version can be half-visible to the list read; its
        fence becomes visible `settle_s` after its rows (see `apply`), so a read whose lists and
        fences took less than that cannot have seen the fence while missing a row.

        The lists and fences are read again when the read was slower than that, or when a doc
        moved on between the two reads (`_moved`). The second read started after the first
        fence read, so it holds every row of the fences that read saw. If it was slow too, it
        keeps only docs whose fence did not move since the first fence read: their rows were
        all visible before the second list read and none was pruned before its fence read.
        """
        settle = self.index.settle_s
        slow = bool(settle) and time.monotonic() - started >= settle
        if not slow and not _moved(found, fences):
            return found, fences
        started = time.monotonic()
        found = await self.index.candidates(request)
        again = await self.fences(_docs_of(found))
        if not settle or time.monotonic() - started < settle:
            return found, again
        return found, {d: f for d, f in again.items() if fences.get(d) == f}

    async def current_version(self, doc_id: str) -> DocState | None:
        return (await self.fences([doc_id])).get(doc_id)

    async def served(
        self, doc_ids: Collection[str], *, rows: Collection[str] | None = None
    ) -> Served:
        """The docs' fences and, for each live one of `rows` (default: all), the rows and
        vectors it is served with (of its fence's `rows` version; one concurrent read of each).
        Rows may be pruned by a newer version at any time after this read, so a caller must not
        assume they are still there: it copies them (or advances on them, `AdvanceDoc`)."""
        if not doc_ids:
            return Served({}, {})
        rows = doc_ids if rows is None else rows
        markers, docs = await asyncio.gather(
            self.index.read_fences(doc_ids),
            self.index.read_rows(rows) if rows else _no_rows(),
        )
        fences = fence_of(markers)
        live = {
            doc.doc_id: doc
            for doc in docs
            if (f := fences.get(doc.doc_id)) is not None
            and not f.deleted and f.rows == doc.version
        }  # fmt: skip
        return Served({d: fences.get(d) for d in doc_ids}, live)

    async def count_chunks(self, doc_id: str | None = None) -> int:
        return await self.index.count_rows(doc_id)

    async def optimize(self, *, min_new_versions: int = 0) -> None:
        await self.index.optimize(min_new_versions=min_new_versions)

    async def drop(self) -> None:
        self._unpruned.clear()
        await self.index.drop()

    async def close(self) -> None:
        try:
            await self.prune()
        finally:
            await self.index.close()


async def _no_rows() -> list[UpsertDoc]:
    return []


def _docs_of(found: Candidates) -> set[str]:
    return {row.doc_id for row, _ in (*found.dense, *found.bm25, *(found.fused or ()))}


def _moved(found: Candidates, fences: Mapping[str, DocState]) -> bool:
    """Whether a live doc's lists hold only rows older than its fence: its new marker landed
    after the list read (or its new rows rank below the lists' depth: the re-read is wasted)."""
    newest: dict[str, int] = {}
    for row, _ in (*found.dense, *found.bm25, *(found.fused or ())):
        newest[row.doc_id] = max(row.version, newest.get(row.doc_id, row.version))
    return any(
        (f := fences.get(doc_id)) is not None and not f.deleted and version < f.rows
        for doc_id, version in newest.items()
    )


def _newer(marker: DocState, fence: DocState | None) -> bool:
    return fence is None or marker.order > fence.order


def _serves_rows_of(fence: DocState | None, version: int) -> bool:
    return fence is not None and not fence.deleted and fence.rows == version


def _threatens(marker: DocState, advance: AdvanceDoc) -> bool:
    """Whether `marker`, ranked between the advance's named rows and the advance, serves
    other rows than the advance names (its writer prunes those)."""
    rows, version = advance.rows_version, advance.version
    between = (rows, False, rows) < marker.order < (version, False, rows)
    return between and (marker.deleted or marker.rows != rows)


def _ranked(
    request: SearchRequest, found: Candidates, fences: Mapping[str, DocState] | None
) -> list[Hit]:
    """The candidates best first, as hits whose rows hold only their identity; with `fences`,
    only rows of each doc's fenced version (without, every row: a guess at what is kept)."""

    def served(rows: Scored) -> Scored:
        if fences is None:
            return list(rows)
        return [
            (row, score) for row, score in rows
            if (f := fences.get(row.doc_id)) is not None
            and not f.deleted and f.rows == row.version
        ]  # fmt: skip

    if found.fused is not None:
        dense = {r.row_id: s for r, s in found.dense}
        bm25 = {r.row_id: s for r, s in found.bm25}
        return [
            Hit(row, score, dense.get(row.row_id), bm25.get(row.row_id))
            for row, score in served(found.fused)
        ]
    dense_rows, bm25_rows = served(found.dense), served(found.bm25)
    by_id = {row.row_id: row for row, _ in (*dense_rows, *bm25_rows)}
    alpha = {"dense": 1.0, "bm25": 0.0}.get(request.mode, request.alpha)
    fused = fuse(
        [(r.row_id, s) for r, s in dense_rows],
        [(r.row_id, s) for r, s in bm25_rows],
        method=request.fusion,
        alpha=alpha,
    )
    raw = {"dense": "dense", "bm25": "bm25"}.get(request.mode)
    return [
        Hit(by_id[f.id], f.score if raw is None else float(getattr(f, raw)), f.dense, f.bm25)
        for f in fused
    ]
