"""The embedded default index: LanceDB tables in a local directory.

Two tables: ``<table>`` holds one row per chunk (text, BM25-indexed ``search_text``, vector), and
``<table>_docs`` holds one row per document — its *fence*: the served version, or a tombstone.

A fence is the doc's commit point. Searches serve a chunk only if its version equals the doc's
fence and the doc is not deleted, so a doc switches versions atomically when its fence advances,
and rows a crashed writer left half-done stay invisible until a replay heals them.

How ``apply`` stays correct with concurrent writers (other tasks or processes, same directory):

1. read the fences of the batch's docs; drop writes older than them (STALE);
2. merge-insert the new chunks on ``chunk_id``; a matched row is only replaced by a *newer*
   version (``target.version < source.version``), so a slow older writer never overwrites newer
   rows — at worst it inserts rows of its older version;
3. advance the fences with a merge-insert that only replaces a fence by a newer one, so every
   fence only moves forward, whatever order writers commit in;
4. re-read the fences and delete every chunk of those docs below the fence (or at/below a
   tombstone).

Why no orphan survives: let ``F`` be a doc's final fence and ``r`` a row of an older version,
committed by writer ``W`` in step 2. ``W`` prunes after that commit. If its fence read already
sees ``F``, ``W`` deletes ``r``. If not, the writer of ``F`` advanced the fence after ``W``'s read,
hence after ``r`` was committed, and that writer's own prune (after its fence commit) sees both
``F`` and ``r`` and deletes ``r``. New rows are always committed before old ones are deleted, so
a failure between steps leaves the old version served; a replay re-runs every step. Lance
serialises commits; a conflicting one is retried (Lance retries merge-inserts itself, and
``_retry`` covers the rest). Both tables declare an unenforced primary key, without which two
concurrent merge-inserts of a new key both insert it (checked on lancedb 0.40).
"""

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS, BTree

from shared.errors import PermanentError, TransientError
from shared.store.fusion import fuse
from shared.store.records import (
    ChunkRecord,
    DeleteDoc,
    DocState,
    DocWrite,
    Hit,
    SearchRequest,
    UpsertDoc,
    Vector,
    WriteOutcome,
)

T = TypeVar("T")

_PRIMARY_KEY = {"lance-schema:unenforced-primary-key:position": "1"}
_FTS = FTS(language="English", stem=True, remove_stop_words=True, lower_case=True)
_RETRIES = 6
_CHUNK_COLUMNS = [
    "chunk_id", "doc_id", "version", "ordinal", "title", "text",
    "section_path", "char_start", "char_end", "source",
]  # fmt: skip
_FILTERABLE = frozenset({"doc_id", "source"})

STATE_SCHEMA = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False, metadata=_PRIMARY_KEY),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("deleted", pa.bool_(), nullable=False),
    ]
)


def chunk_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False, metadata=_PRIMARY_KEY),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("version", pa.int64(), nullable=False),
            pa.field("ordinal", pa.int32()),
            pa.field("title", pa.string()),
            pa.field("text", pa.string()),
            pa.field("section_path", pa.list_(pa.string())),
            pa.field("char_start", pa.int32()),
            pa.field("char_end", pa.int32()),
            pa.field("source", pa.string()),
            pa.field("search_text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def search_text(chunk: ChunkRecord) -> str:
    """What BM25 sees: title, section path and text."""
    parts = (chunk.title, " / ".join(chunk.section_path), chunk.text)
    return "\n".join(part for part in parts if part)


class LanceDBStore:
    """`Store` on LanceDB. Construction is cheap; tables and indexes are made on first use.

    Every read checks for new table versions (``read_consistency_interval=0``), so a reader in
    another process sees a write as soon as ``apply`` returns. Call ``optimize`` periodically
    from the writer.
    """

    def __init__(self, path: str | Path, dim: int, *, table: str = "chunks") -> None:
        self.path, self.dim, self.table = Path(path), dim, table
        self._db: Any = None
        self._chunks: Any = None
        self._state: Any = None  # lancedb is untyped
        self._lock = asyncio.Lock()
        self._optimized_at = 0  # chunk-table version after the last optimize()

    async def open(self) -> None:
        """Create or open both tables and their indexes (idempotent, safe across processes)."""
        async with self._lock:
            if self._chunks is None:
                chunks = await _retry(self._open, any_error=True)
                vector = (await chunks.schema()).field("vector").type
                if getattr(vector, "list_size", None) != self.dim:
                    await self._close()
                    raise ValueError(f"{self.path}/{self.table} holds {vector}, not dim {self.dim}")

    async def _open(self) -> Any:
        db = await lancedb.connect_async(self.path, read_consistency_interval=timedelta(0))
        chunks = await _open_table(db, self.table, chunk_schema(self.dim))
        state = await _open_table(db, f"{self.table}_docs", STATE_SCHEMA)
        await _ensure_index(chunks, "search_text", _FTS)
        await _ensure_index(chunks, "chunk_id", BTree())
        await _ensure_index(chunks, "doc_id", BTree())
        await _ensure_index(state, "doc_id", BTree())
        self._db, self._chunks, self._state = db, chunks, state
        return chunks

    async def _tables(self) -> tuple[Any, Any]:
        if self._chunks is None:
            await self.open()
        return self._chunks, self._state

    # ---- writes ------------------------------------------------------------------------------

    async def apply(self, writes: Sequence[DocWrite]) -> list[WriteOutcome]:
        """Apply a batch in three commits at most (chunks, fences, prune); see the module doc.

        An I/O failure (directory gone, disk full, read-only) is a `TransientError`: the batch
        is retried later and a replay heals whatever step it stopped at.
        """
        try:
            return await self._apply(writes)
        except (OSError, RuntimeError) as exc:
            if not _is_io_error(exc):
                raise
            raise TransientError(f"LanceDB I/O error ({type(exc).__name__})") from exc

    async def _apply(self, writes: Sequence[DocWrite]) -> list[WriteOutcome]:
        if not writes:
            return []
        chunks, state = await self._tables()
        doc_ids = list(dict.fromkeys(w.doc_id for w in writes))
        before = await self._fences(doc_ids)
        outcomes, winners = plan(writes, before)
        new_rows = [
            w for w in winners.values()
            if isinstance(w, UpsertDoc) and _newer(w.version, before.get(w.doc_id))
        ]  # fmt: skip
        rows = self._rows(new_rows)
        if rows.num_rows:
            await _retry(lambda: _merge(chunks, "chunk_id", rows))
        advance = [
            DocState(w.doc_id, w.version, isinstance(w, DeleteDoc))
            for w in winners.values()
            if _newer(w.version, before.get(w.doc_id))
        ]
        if advance:
            data = pa.Table.from_pylist(
                [{"doc_id": s.doc_id, "version": s.version, "deleted": s.deleted} for s in advance],
                schema=STATE_SCHEMA,
            )
            await _retry(lambda: _merge(state, "doc_id", data))
        await self._prune(doc_ids)
        return outcomes

    async def _prune(self, doc_ids: Sequence[str]) -> None:
        """Delete chunks below each doc's fence (at or below it for a tombstone)."""
        chunks, _ = await self._tables()
        fences = await self._fences(doc_ids)
        if not fences:
            return
        clauses = [
            f"(doc_id = {_sql(f.doc_id)} AND version {'<=' if f.deleted else '<'} {f.version})"
            for f in fences.values()
        ]
        where = f"doc_id IN ({', '.join(_sql(d) for d in fences)}) AND ({' OR '.join(clauses)})"
        if await chunks.count_rows(where):  # an empty delete would still commit a table version
            await _retry(lambda: chunks.delete(where))

    def _rows(self, upserts: Sequence[UpsertDoc]) -> pa.Table:
        columns: dict[str, list[Any]] = {name: [] for name in chunk_schema(self.dim).names}
        vectors: list[Vector] = []
        seen: set[str] = set()
        for doc in upserts:
            if not doc.chunks:
                continue
            matrix = np.asarray(doc.vectors, dtype=np.float32)
            if matrix.shape != (len(doc.chunks), self.dim) or not np.isfinite(matrix).all():
                raise PermanentError(
                    f"{doc.doc_id}@{doc.version}: vectors of shape {matrix.shape} for "
                    f"{len(doc.chunks)} chunks of dim {self.dim}, or not finite"
                )
            for chunk in doc.chunks:
                if (chunk.doc_id, chunk.version) != (doc.doc_id, doc.version):
                    raise PermanentError(
                        f"{chunk.chunk_id} is not a chunk of {doc.doc_id}@{doc.version}"
                    )
                if chunk.chunk_id in seen:
                    raise PermanentError(f"chunk id {chunk.chunk_id} repeated in one batch")
                seen.add(chunk.chunk_id)
                for name in _CHUNK_COLUMNS:
                    columns[name].append(getattr(chunk, name))
                columns["search_text"].append(search_text(chunk))
            vectors.append(matrix)
        flat = np.concatenate(vectors).reshape(-1) if vectors else np.empty(0, np.float32)
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.dim)
        columns["section_path"] = [list(p) for p in columns["section_path"]]
        return pa.Table.from_pydict(columns, schema=chunk_schema(self.dim))

    async def optimize(
        self,
        *,
        min_new_versions: int = 0,
        cleanup_older_than: timedelta = timedelta(minutes=10),
    ) -> None:
        """Compact fragments, fold new rows into the indexes, drop old table versions.

        Every add, merge and delete commits a new table version and usually a new small fragment
        (deletes add deletion files). Searches still find rows not yet indexed by scanning those
        fragments, so freshness costs nothing at write time, but reads and writes slow down as
        fragments pile up: on 5k rows, 300 one-doc applies without this took hybrid search p50
        from ~12 to ~100 ms and apply p50 from ~30 to ~150 ms. Call it every ~50 applies (or on a
        timer) from one writer, off the ack path; it loses commit races to concurrent writes,
        which are retried. Versions older than ``cleanup_older_than`` are deleted: keep it well
        above the longest read another process may still be running. With `min_new_versions`,
        it does nothing until the chunk table has gained that many versions since the last run,
        so a writer can call it often and pay only when writes have piled up.
        """
        tables = await self._tables()
        if await tables[0].version() - self._optimized_at < min_new_versions:
            return
        for table in tables:
            await _retry(partial(table.optimize, cleanup_older_than=cleanup_older_than))
        self._optimized_at = await tables[0].version()

    # ---- reads -------------------------------------------------------------------------------

    async def hybrid_search(self, request: SearchRequest) -> list[Hit]:
        """Read ``candidates`` from each list, keep the chunks of each doc's fenced version, fuse.

        ``Hit.score`` is the fused score in hybrid mode, the cosine similarity in dense mode and
        the BM25 score in bm25 mode.

        The fences are read after the lists, so a doc whose new chunks *and* new fence were both
        committed in between (a window of one fence read) can be missing from that one answer.
        """
        await self._tables()
        unknown = set(request.filters) - _FILTERABLE
        if unknown:
            raise ValueError(f"cannot filter on {sorted(unknown)}; only on {sorted(_FILTERABLE)}")
        where = " AND ".join(f"{k} = {_sql(v)}" for k, v in sorted(request.filters.items()))
        want_dense = request.mode in ("dense", "hybrid")
        if want_dense and (request.vector is None or request.vector.shape != (self.dim,)):
            raise ValueError(f"mode {request.mode!r} needs a query vector of dim {self.dim}")
        dense, bm25 = await asyncio.gather(
            self._dense(request, where) if want_dense else _nothing(),
            self._bm25(request, where) if request.mode != "dense" else _nothing(),
        )
        rows = {r["chunk_id"]: r for r in (*dense, *bm25)}
        fences = await self._fences({r["doc_id"] for r in rows.values()})
        served = {
            cid for cid, r in rows.items()
            if (f := fences.get(r["doc_id"])) is not None
            and not f.deleted and f.version == r["version"]
        }  # fmt: skip
        d_list = [(r["chunk_id"], 1.0 - r["_distance"]) for r in dense if r["chunk_id"] in served]
        b_list = [(r["chunk_id"], r["_score"]) for r in bm25 if r["chunk_id"] in served]
        alpha = {"dense": 1.0, "bm25": 0.0}.get(request.mode, request.alpha)
        fused = fuse(d_list, b_list, method=request.fusion, alpha=alpha)[: request.k]
        raw = {"dense": "dense", "bm25": "bm25"}.get(request.mode)
        return [
            Hit(
                chunk=_chunk(rows[f.id]),
                score=f.score if raw is None else float(getattr(f, raw)),
                dense_score=f.dense,
                bm25_score=f.bm25,
            )
            for f in fused
        ]

    async def _dense(self, request: SearchRequest, where: str) -> list[dict[str, Any]]:
        chunks, _ = await self._tables()
        query = chunks.query().nearest_to(np.asarray(request.vector, dtype=np.float32))
        query = query.distance_type("cosine").limit(request.candidates)
        if where:
            query = query.where(where)
        table = await query.select([*_CHUNK_COLUMNS, "_distance"]).to_arrow()
        return list(table.to_pylist())

    async def _bm25(self, request: SearchRequest, where: str) -> list[dict[str, Any]]:
        if not request.text.strip():
            return []
        chunks, _ = await self._tables()
        query = chunks.query().nearest_to_text(request.text, columns=["search_text"])
        query = query.limit(request.candidates)
        if where:
            query = query.where(where)
        table = await query.select([*_CHUNK_COLUMNS, "_score"]).to_arrow()
        return list(table.to_pylist())

    async def _fences(self, doc_ids: Iterable[str]) -> dict[str, DocState]:
        ids = list(doc_ids)
        if not ids:
            return {}
        _, state = await self._tables()
        where = f"doc_id IN ({', '.join(_sql(d) for d in ids)})"
        table = await state.query().where(where).select(["doc_id", "version", "deleted"]).to_arrow()
        fences: dict[str, DocState] = {}
        for row in table.to_pylist():  # one row per doc; the newest wins if ever there are more
            fence = DocState(row["doc_id"], row["version"], row["deleted"])
            if _newer(fence.version, fences.get(fence.doc_id)):
                fences[fence.doc_id] = fence
        return fences

    async def current_version(self, doc_id: str) -> DocState | None:
        return (await self._fences([doc_id])).get(doc_id)

    async def count_chunks(self, doc_id: str | None = None) -> int:
        chunks, _ = await self._tables()
        where = None if doc_id is None else f"doc_id = {_sql(doc_id)}"
        return int(await chunks.count_rows(where))

    async def close(self) -> None:
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        for table in (self._chunks, self._state):
            if table is not None:
                table.close()
        if self._db is not None:
            self._db.close()
        self._db = self._chunks = self._state = None


def plan(
    writes: Sequence[DocWrite], fences: Mapping[str, DocState]
) -> tuple[list[WriteOutcome], dict[str, DocWrite]]:
    """Outcome of each write, in order, and the last applied write of each doc (its winner).

    An upsert is stale below the fence or at/below a tombstone; a delete at/below the fence.
    An equal-version upsert replay is APPLIED (and changes nothing).
    """
    current = dict(fences)
    outcomes: list[WriteOutcome] = []
    winners: dict[str, DocWrite] = {}
    for write in writes:
        fence = current.get(write.doc_id)
        deleting = isinstance(write, DeleteDoc)
        stale = fence is not None and (
            write.version < fence.version
            or (write.version == fence.version and (deleting or fence.deleted))
        )
        outcomes.append(WriteOutcome.STALE if stale else WriteOutcome.APPLIED)
        if not stale:
            current[write.doc_id] = DocState(write.doc_id, write.version, deleting)
            winners[write.doc_id] = write
    return outcomes, winners


def _newer(version: int, fence: DocState | None) -> bool:
    return fence is None or version > fence.version


def _chunk(row: Mapping[str, Any]) -> ChunkRecord:
    fields = {name: row[name] for name in _CHUNK_COLUMNS}
    fields["section_path"] = tuple(fields["section_path"] or ())
    return ChunkRecord(**fields)


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def _nothing() -> list[dict[str, Any]]:
    return []


async def _merge(table: Any, key: str, data: pa.Table) -> None:
    """Insert new keys; replace a matched row only by a newer version of it."""
    builder = table.merge_insert(key).when_not_matched_insert_all()
    await builder.when_matched_update_all(where="target.version < source.version").execute(data)


async def _open_table(db: Any, name: str, schema: pa.Schema) -> Any:
    try:
        return await db.open_table(name)
    except ValueError:  # not found
        return await db.create_table(name, schema=schema, exist_ok=True)


async def _ensure_index(table: Any, column: str, config: Any) -> None:
    if any(column in index.columns for index in await table.list_indices()):
        return
    try:
        await table.create_index(column, config=config, replace=False)
    except (RuntimeError, ValueError) as exc:  # another process won the race
        if "already exists" not in str(exc):
            raise


def _is_io_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, OSError) or "io error" in text or "lanceerror(io)" in text


def _is_conflict(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "conflict" in text or "contention" in text


async def _retry(op: Callable[[], Awaitable[T]], *, any_error: bool = False) -> T:
    """Run ``op``, retrying Lance commit conflicts (or, for open, any error) with backoff."""
    for attempt in range(_RETRIES):
        try:
            return await op()
        except Exception as exc:
            if not (any_error or _is_conflict(exc)):
                raise
            if attempt == _RETRIES - 1:
                raise TransientError(f"LanceDB write failed after {_RETRIES} attempts") from exc
            await asyncio.sleep(0.01 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")
