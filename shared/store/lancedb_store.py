"""The embedded default index: LanceDB tables in a local directory, on the shared commit protocol.

Two tables: ``<table>`` holds one row per chunk *version* (key ``row_id`` = ``chunk_id@version``;
text, BM25-indexed ``search_text``, vector, metadata tags), and ``<table>_fences`` holds the fence
markers (key ``doc_id@version`` plus ``~`` for a tombstone). `shared.store.versioning` says how
`apply` commits and why a reader never sees a doc half-updated; this module only provides the
primitives: inserts, deletes by predicate, the two candidate lists, compaction.

Markers are merge-inserted on their key (insert when not matched). Rows are appended: a
merge-insert's join on ``row_id`` cost as much as the rest of a one-doc update. So a version's
rows can be stored twice, by a redelivery that races its first delivery or follows a crash
between the rows and the marker. Reads return each row once (`fuse` keeps a repeated row's
best score, `read_rows` and `count_rows` each row once), and the doc's next version prunes both
copies.

LanceDB is embedded: one directory, shared by processes on one machine (or one volume). Lance
serialises commits; a conflicting one is retried (Lance retries merge-inserts itself, and
``_retry`` covers the rest). The fence table declares an unenforced primary key, without which
two concurrent merge-inserts of a new key both insert it (checked on lancedb 0.40); the chunk
table declares one too, from when its rows were merge-inserted. For several machines, use the
Weaviate store.
"""

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from lancedb.index import FTS, BTree, HnswSq, IvfPq, LabelList

from shared.chunk_text import search_text
from shared.errors import TransientError
from shared.settings import StoreSettings
from shared.store.records import (
    ChunkRecord,
    DocState,
    DocWrite,
    SearchRequest,
    Served,
    UpsertDoc,
    Vector,
    WriteOutcome,
    read_marker,
    split_filters,
)
from shared.store.versioning import Candidates, Scored, VersionedStore

T = TypeVar("T")

_PRIMARY_KEY = {"lance-schema:unenforced-primary-key:position": "1"}
_FTS = FTS(language="English", stem=True, remove_stop_words=True, lower_case=True)
_RETRIES = 6
_CHUNK_COLUMNS = [
    "chunk_id", "doc_id", "version", "ordinal", "title", "text",
    "section_path", "char_start", "char_end", "source", "tags",
]  # fmt: skip

_REF_COLUMNS = ["chunk_id", "doc_id", "version"]
"""What a candidate list reads of each row: enough to fuse and fence it."""

FENCE_SCHEMA = pa.schema(
    [
        pa.field("fence_id", pa.string(), nullable=False, metadata=_PRIMARY_KEY),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("version", pa.int64(), nullable=False),
        pa.field("deleted", pa.bool_(), nullable=False),
        pa.field("rows_version", pa.int64(), nullable=True),
    ]
)


def chunk_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("row_id", pa.string(), nullable=False, metadata=_PRIMARY_KEY),
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("version", pa.int64(), nullable=False),
            pa.field("ordinal", pa.int32()),
            pa.field("title", pa.string()),
            pa.field("text", pa.string()),
            pa.field("section_path", pa.list_(pa.string())),
            pa.field("char_start", pa.int32()),
            pa.field("char_end", pa.int32()),
            pa.field("source", pa.string()),
            pa.field("tags", pa.list_(pa.string())),
            pa.field("search_text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
        ]
    )


class IndexFormatError(ValueError):
    """The directory holds a table this version cannot use (other format or dimension)."""


class LanceDBIndex:
    """`VersionedIndex` on LanceDB. Construction is cheap; tables and indexes are made on first
    use. Every read checks for new table versions (``read_consistency_interval=0``), so a
    reader in another process sees a write as soon as it is committed."""

    settle_s = 0.0
    """An insert is one commit: its rows become visible together."""

    def __init__(
        self,
        path: str | Path,
        dim: int,
        *,
        table: str = "chunks",
        settings: StoreSettings | None = None,
    ) -> None:
        self.path, self.dim, self.table = Path(path), dim, table
        self.settings = settings or StoreSettings()
        """Only its ``ann_*`` fields are read here (the ANN index and the dense search)."""
        self._db: Any = None
        self._chunks: Any = None
        self._fences: Any = None  # lancedb is untyped
        self._lock = asyncio.Lock()
        self._optimized_at = [0, 0]  # each table's version after its last optimize()

    async def open(self) -> None:
        async with self._lock:
            if self._chunks is None:
                await _retry(self._open, any_error=True)

    async def _open(self) -> None:
        db = await lancedb.connect_async(self.path, read_consistency_interval=timedelta(0))
        try:
            chunks = await _open_table(db, self.table, chunk_schema(self.dim))
            schema = await chunks.schema()
            if "row_id" not in schema.names:
                raise IndexFormatError(
                    f"{self.path}/{self.table} was written by an older ragstream (rows keyed "
                    "by chunk_id alone); delete it and re-ingest, or use another table"
                )
            vector = schema.field("vector").type
            if getattr(vector, "list_size", None) != self.dim:
                raise IndexFormatError(
                    f"{self.path}/{self.table} holds {vector}, not dim {self.dim}"
                )
            fences = await _open_table(db, f"{self.table}_fences", FENCE_SCHEMA)
            await _ensure_rows_version(fences)
            await _ensure_index(chunks, "search_text", _FTS)
            await _ensure_index(chunks, "row_id", BTree())
            await _ensure_index(chunks, "doc_id", BTree())
            await _ensure_index(chunks, "tags", LabelList())
            await _ensure_index(fences, "fence_id", BTree())
            await _ensure_index(fences, "doc_id", BTree())
        except BaseException:
            db.close()  # type: ignore[no-untyped-call]
            raise
        self._db, self._chunks, self._fences = db, chunks, fences

    async def _tables(self) -> tuple[Any, Any]:
        if self._chunks is None:
            await self.open()
        return self._chunks, self._fences

    # ---- writes ------------------------------------------------------------------------------

    async def insert_rows(self, docs: Sequence[UpsertDoc]) -> None:
        chunks, _ = await self._tables()
        rows = self._rows(docs)
        await _retry(partial(chunks.add, rows))

    async def insert_fences(self, fences: Sequence[DocState]) -> None:
        _, table = await self._tables()
        data = pa.Table.from_pylist(
            [
                {"fence_id": f.marker_id, "doc_id": f.doc_id, "version": f.version,
                 "deleted": f.deleted, "rows_version": f.rows}
                for f in fences
            ],
            schema=FENCE_SCHEMA,
        )  # fmt: skip
        await _retry(lambda: _insert_new(table, "fence_id", data))

    async def prune_rows(self, fences: Sequence[DocState]) -> None:
        chunks, _ = await self._tables()
        rows = " OR ".join(
            f"(doc_id = {_sql(f.doc_id)} AND version <= {f.version})"
            if f.deleted
            else f"(doc_id = {_sql(f.doc_id)} AND version < {f.version} AND version != {f.rows})"
            for f in fences
        )
        await _delete(chunks, f"{_docs(fences)} AND ({rows})")

    async def delete_markers(self, markers: Sequence[DocState]) -> None:
        _, table = await self._tables()
        await _delete(table, f"fence_id IN ({', '.join(_sql(m.marker_id) for m in markers)})")

    def _rows(self, docs: Sequence[UpsertDoc]) -> pa.Table:
        columns: dict[str, list[Any]] = {name: [] for name in chunk_schema(self.dim).names}
        vectors: list[Vector] = []
        for doc in docs:
            for chunk in doc.chunks:
                columns["row_id"].append(chunk.row_id)
                for name in _CHUNK_COLUMNS:
                    columns[name].append(getattr(chunk, name))
                columns["search_text"].append(
                    search_text(chunk.title, chunk.section_path, chunk.text)
                )
            vectors.append(np.asarray(doc.vectors, dtype=np.float32))
        flat = np.concatenate(vectors).reshape(-1) if vectors else np.empty(0, np.float32)
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), self.dim)
        columns["section_path"] = [list(p) for p in columns["section_path"]]
        columns["tags"] = [list(t) for t in columns["tags"]]
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
        it leaves a table alone until it has gained that many versions since its last run, so a
        writer can call it often and pay only when writes have piled up (a re-sync of unchanged
        docs writes only fence markers: the fence table piles up versions alone).
        """
        for i, table in enumerate(await self._tables()):
            if await table.version() - self._optimized_at[i] < min_new_versions:
                continue
            await _retry(partial(table.optimize, cleanup_older_than=cleanup_older_than))
            if i == 0:
                await self._ensure_vector_index(table)
            self._optimized_at[i] = await table.version()

    async def _ensure_vector_index(self, chunks: Any) -> None:
        """Past ``ann_min_rows`` rows, build the ANN index on the vectors; `optimize` folds
        later rows into it (rows not yet folded in are searched exactly meanwhile), and
        rebuilds it once the table has grown ``ann_retrain_growth`` times since it was trained
        (its partitions are sized for the rows it was trained on). It is named after that row
        count. Training takes minutes on 1M chunks (docs/scaling.md): hence here, off the
        write path. A rebuild is made before the old index is dropped, so searches keep one."""
        rows = await chunks.count_rows()
        built = sorted(
            (_trained_rows(index.name), index.name)
            for index in await chunks.list_indices()
            if "vector" in index.columns
        )
        growth = self.settings.ann_retrain_growth
        if built and not (growth > 1 and rows >= built[-1][0] * growth):
            newest = built[-1][1]
        elif rows >= self.settings.ann_min_rows:
            newest = f"vector_ann_{rows}"
            try:
                config = _ann_config(self.settings, self.dim)
                await chunks.create_index("vector", config=config, name=newest, replace=False)
            except (RuntimeError, ValueError) as exc:  # another process won the race
                if "already exists" not in str(exc):
                    raise
        else:
            return
        for _, name in built:
            if name != newest:
                await _retry(partial(chunks.drop_index, name))

    # ---- reads -------------------------------------------------------------------------------

    async def candidates(self, request: SearchRequest) -> Candidates:
        fields, tags = split_filters(request.filters)
        clauses = [f"{k} = {_sql(v)}" for k, v in sorted(fields.items())]
        clauses += [f"array_has(tags, {_sql(t)})" for t in tags]
        where = " AND ".join(clauses)
        wants_dense = request.mode in ("dense", "hybrid")
        dense, bm25 = await asyncio.gather(
            self._dense(request, where) if wants_dense else _nothing(),
            self._bm25(request, where) if request.mode != "dense" else _nothing(),
        )
        return Candidates(dense=dense, bm25=bm25)

    async def _dense(self, request: SearchRequest, where: str) -> Scored:
        chunks, _ = await self._tables()
        query = chunks.query().nearest_to(np.asarray(request.vector, dtype=np.float32))
        query = query.distance_type("cosine").limit(request.candidates)
        ann = self.settings  # ignored while there is no ANN index (exact search)
        query = query.nprobes(ann.ann_nprobes).refine_factor(ann.ann_refine_factor)
        query = query.ef(max(ann.ann_ef, request.candidates))
        if where:
            query = query.where(where)
        table = await query.select([*_REF_COLUMNS, "_distance"]).to_arrow()
        return [(_ref(r), 1.0 - r["_distance"]) for r in table.to_pylist()]

    async def _bm25(self, request: SearchRequest, where: str) -> Scored:
        if not request.text.strip():
            return []
        chunks, _ = await self._tables()
        query = chunks.query().nearest_to_text(request.text, columns=["search_text"])
        query = query.limit(request.candidates)
        if where:
            query = query.where(where)
        table = await query.select([*_REF_COLUMNS, "_score"]).to_arrow()
        return [(_ref(r), r["_score"]) for r in table.to_pylist()]

    async def complete(self, rows: Sequence[ChunkRecord]) -> list[ChunkRecord]:
        """The full rows of the candidates a search keeps (its lists read only their ids: reading
        every candidate's text by random access cost more than both searches at 1M rows)."""
        if not rows:
            return []
        chunks, _ = await self._tables()
        keys = ", ".join(_sql(r.row_id) for r in rows)
        table = await chunks.query().where(f"row_id IN ({keys})").select(
            ["row_id", *_CHUNK_COLUMNS]
        ).to_arrow()  # fmt: skip
        full = {r["row_id"]: _chunk(r) for r in table.to_pylist()}
        return [full[r.row_id] for r in rows if r.row_id in full]

    async def read_fences(self, doc_ids: Collection[str]) -> list[DocState]:
        _, table = await self._tables()
        where = f"doc_id IN ({', '.join(_sql(d) for d in doc_ids)})"
        columns = ["doc_id", "version", "deleted", "rows_version"]
        rows = await table.query().where(where).select(columns).to_arrow()
        values = [rows.column(c).to_pylist() for c in columns]
        return [read_marker(*r) for r in zip(*values, strict=True)]

    async def export(self) -> list[UpsertDoc]:
        """Every doc version the table holds, with its rows' vectors (to copy an index)."""
        chunks, _ = await self._tables()
        table = await chunks.query().select([*_CHUNK_COLUMNS, "vector"]).to_arrow()
        return _docs_of_table(table)

    async def read_rows(self, doc_ids: Collection[str]) -> list[UpsertDoc]:
        chunks, _ = await self._tables()
        query = chunks.query().where(_docs_in(doc_ids)).select([*_CHUNK_COLUMNS, "vector"])
        return _docs_of_table(await query.to_arrow())

    async def count_rows(self, doc_id: str | None = None) -> int:
        """Distinct rows: a row stored twice counts once (it reads every ``row_id``)."""
        chunks, _ = await self._tables()
        query = chunks.query().select(["row_id"])
        if doc_id is not None:
            query = query.where(f"doc_id = {_sql(doc_id)}")
        return len(pc.unique((await query.to_arrow()).column("row_id")))

    async def close(self) -> None:
        async with self._lock:
            await self._close()

    async def drop(self) -> None:
        """Delete both tables (a retired index generation)."""
        await self._tables()
        async with self._lock:
            db = self._db
            for name in (self.table, f"{self.table}_fences"):
                await db.drop_table(name, ignore_missing=True)
            await self._close()

    async def _close(self) -> None:
        for table in (self._chunks, self._fences):
            if table is not None:
                table.close()
        if self._db is not None:
            self._db.close()
        self._db = self._chunks = self._fences = None


class LanceDBStore(VersionedStore):
    """`Store` on a LanceDB directory. Call ``optimize`` periodically from the writer."""

    index: LanceDBIndex

    def __init__(
        self,
        path: str | Path,
        dim: int,
        *,
        table: str = "chunks",
        settings: StoreSettings | None = None,
    ) -> None:
        super().__init__(LanceDBIndex(path, dim, table=table, settings=settings))

    async def apply(
        self,
        writes: Sequence[DocWrite],
        *,
        fences: Mapping[str, DocState | None] | None = None,
        prune: bool = True,
    ) -> list[WriteOutcome]:
        """See `VersionedStore.apply`. An I/O failure (directory gone, disk full, read-only) is
        a `TransientError`: the batch is retried later and a replay heals whatever step it
        stopped at."""
        with _io_errors_transient():
            return await super().apply(writes, fences=fences, prune=prune)

    async def served(
        self, doc_ids: Collection[str], *, rows: Collection[str] | None = None
    ) -> Served:
        """See `VersionedStore.served`; an I/O failure is a `TransientError`, as in `apply`."""
        with _io_errors_transient():
            return await super().served(doc_ids, rows=rows)


@contextlib.contextmanager
def _io_errors_transient() -> Iterator[None]:
    try:
        yield
    except (OSError, RuntimeError) as exc:
        if not _is_io_error(exc):
            raise
        raise TransientError(f"LanceDB I/O error ({type(exc).__name__})") from exc


def _ref(row: Mapping[str, Any]) -> ChunkRecord:
    """A candidate by its identity alone (`complete` reads the rest for the rows kept)."""
    return ChunkRecord(
        chunk_id=row["chunk_id"], doc_id=row["doc_id"], version=row["version"], ordinal=0,
        title="", text="", section_path=(), char_start=0, char_end=0,
    )  # fmt: skip


def _chunk(row: Mapping[str, Any]) -> ChunkRecord:
    fields = {name: row[name] for name in _CHUNK_COLUMNS}
    fields["section_path"] = tuple(fields["section_path"] or ())
    fields["tags"] = tuple(fields["tags"] or ())
    return ChunkRecord(**fields)


async def _nothing() -> Scored:
    return []


def _docs_of_table(table: pa.Table) -> list[UpsertDoc]:
    """Group rows (with their vectors) into one `UpsertDoc` per doc version, in ordinal order,
    each row once. The vectors are taken from Arrow as one array (as Python lists they cost most
    of a read)."""
    if not table.num_rows:
        return []
    column = table.column("vector").combine_chunks()
    vectors = column.flatten().to_numpy().astype(np.float32, copy=False)
    vectors = vectors.reshape(len(column), -1)
    rows = table.drop_columns(["vector"]).to_pylist()
    grouped: dict[tuple[str, int], dict[str, int]] = {}
    for i, row in enumerate(rows):
        grouped.setdefault((row["doc_id"], row["version"]), {}).setdefault(row["chunk_id"], i)
    docs = []
    for (doc_id, version), first in grouped.items():
        positions = sorted(first.values(), key=lambda i: rows[i]["ordinal"])
        chunks = [_chunk(rows[i]) for i in positions]
        docs.append(UpsertDoc(doc_id, version, chunks, vectors[positions]))
    return docs


def _docs_in(doc_ids: Iterable[str]) -> str:
    return f"doc_id IN ({', '.join(_sql(d) for d in doc_ids)})"


def _docs(fences: Sequence[DocState]) -> str:
    return _docs_in(f.doc_id for f in fences)


async def _delete(table: Any, where: str) -> None:
    if await table.count_rows(where):  # an empty delete would still commit a table version
        await _retry(partial(table.delete, where))


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


async def _insert_new(table: Any, key: str, data: pa.Table) -> None:
    """Insert the rows whose key is not there yet; rows are immutable, a match changes nothing."""
    await table.merge_insert(key).when_not_matched_insert_all().execute(data)


async def _open_table(db: Any, name: str, schema: pa.Schema) -> Any:
    try:
        return await db.open_table(name)
    except ValueError:  # not found
        return await db.create_table(name, schema=schema, exist_ok=True)


async def _ensure_rows_version(fences: Any) -> None:
    """Add the advances' `rows_version` column to a fence table written before they existed
    (each old marker serves its own version's rows)."""
    if "rows_version" in (await fences.schema()).names:
        return
    try:
        await fences.add_columns({"rows_version": "version"})
    except (RuntimeError, ValueError) as exc:  # another process won the race
        if "rows_version" not in str(exc):
            raise


async def _ensure_index(table: Any, column: str, config: Any) -> None:
    if any(column in index.columns for index in await table.list_indices()):
        return
    try:
        await table.create_index(column, config=config, replace=False)
    except (RuntimeError, ValueError) as exc:  # another process won the race
        if "already exists" not in str(exc):
            raise


def _trained_rows(index_name: str) -> int:
    """The row count an ANN index was trained on, from its name (0 if not named so)."""
    tail = index_name.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _ann_config(settings: StoreSettings, dim: int) -> IvfPq | HnswSq:
    """The ANN index the settings name, on cosine distance (what `_dense` searches with)."""
    if settings.ann_index == "ivf_hnsw_sq":
        return HnswSq(distance_type="cosine")
    # dim/8 sub-vectors (48 bytes a 384-dim row), twice LanceDB's default: better ranking
    # before the refine step re-scores the candidates exactly.
    sub_vectors = dim // 8 if dim % 8 == 0 else None
    return IvfPq(
        distance_type="cosine",
        num_sub_vectors=sub_vectors,
        target_partition_size=settings.ann_partition_rows,
    )


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
            if isinstance(exc, IndexFormatError) or not (any_error or _is_conflict(exc)):
                raise
            if attempt == _RETRIES - 1:
                raise TransientError(f"LanceDB write failed after {_RETRIES} attempts") from exc
            await asyncio.sleep(0.01 * 2**attempt * (1 + random.random()))
    raise AssertionError("unreachable")
