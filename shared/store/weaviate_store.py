"""The production index: Weaviate (client v4, async), on the shared commit protocol.

Two collections: ``<Table>`` holds one object per chunk *version* (UUID = uuid5 of
``chunk_id@version``; self-provided vector in an HNSW index with cosine distance; BM25 over
``search_text``, which holds the title, heading path and text, English-stemmed by ragstream (as
LanceDB's full-text index stems; queries are stemmed alike); filterable ``doc_id``,
``version``, ``source`` and metadata ``tags``), and ``<Table>Fences`` holds the fence markers
(UUID = uuid5 of ``doc_id@version[~]``). `shared.store.versioning` says how `apply` commits and
why the fence can live here although Weaviate has no conditional update.

Errors: every object of a batch is checked (a batch call succeeds even when objects failed).
Connection loss, timeouts, an unavailable or overloaded server are `TransientError`s (the stage
retries and the replay heals); an object Weaviate refuses for what it is (a property or vector
that does not fit the schema) is a `PermanentError` that dead-letters its event with Weaviate's
reason. Each call is retried `retries` times in-process before it is reported.

Writes and fence reads use consistency level `consistency` (QUORUM by default: read-your-writes
on a replicated cluster; on one node every level is the same).
"""

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlparse

import grpc  # type: ignore[import-untyped]
import httpx
import numpy as np
import weaviate
from weaviate.classes.config import (
    Configure,
    DataType,
    Property,
    StopwordsPreset,
    Tokenization,
    VectorDistances,
)
from weaviate.classes.data import DataObject
from weaviate.classes.init import AdditionalConfig, Auth, Timeout
from weaviate.classes.query import Filter, HybridFusion, MetadataQuery
from weaviate.collections.classes.config import ConsistencyLevel
from weaviate.exceptions import (
    UnexpectedStatusCodeError,
    WeaviateBaseError,
    WeaviateInsertInvalidPropertyError,
    WeaviateInsertManyAllFailedError,
    WeaviateInvalidInputError,
)

from shared.chunk_text import search_text
from shared.errors import PermanentError, TransientError
from shared.settings import StoreSettings
from shared.store.records import (
    ChunkRecord,
    DocState,
    SearchRequest,
    UpsertDoc,
    read_marker,
    split_filters,
)
from shared.store.stemming import stem_text
from shared.store.versioning import Candidates, Scored, VersionedStore

T = TypeVar("T")
SCHEMA_VERSION = 2
"""Bump when what a collection holds for the same rows changes (2: stemmed `search_text`)."""
_NAMESPACE = uuid.UUID("0b6f9a3e-51c4-4d0e-9f53-6b2b8c1d7e24")
_INSERT_SLICE = 500
_READ_SLICE = 1000
_DELETE_LIMIT = (
    10_000  # Weaviate's QUERY_MAXIMUM_RESULTS default: a delete_many removes at most this
)
_CHUNK_PROPERTIES = [
    "chunk_id", "doc_id", "version", "ordinal", "title", "text",
    "section_path", "char_start", "char_end", "source", "tags",
]  # fmt: skip
_TRANSIENT_WORDS = (
    "timeout", "timed out", "deadline", "unavailable", "connection", "connect",
    "too many requests", "shutting down", "not ready", "read-only", "readonly",
    "context canceled", "eof", "reset", "refused", "broken pipe", "leader", "raft",
)  # fmt: skip

_TRANSIENT = (WeaviateBaseError, OSError, TimeoutError, httpx.HTTPError, grpc.RpcError)
"""Failures a retry can cure (unless `_permanent` says the server refused the request itself)."""


def row_uuid(chunk: ChunkRecord) -> str:
    return str(uuid.uuid5(_NAMESPACE, chunk.row_id))


def fence_uuid(fence: DocState) -> str:
    return str(uuid.uuid5(_NAMESPACE, fence.marker_id))


async def _ensure_rows_version(fences: Any) -> None:
    """Add the advances' `rows_version` property to a fence collection made before they
    existed (its markers, without it, serve their own version's rows)."""
    config = await fences.config.get()
    if any(p.name == "rows_version" for p in config.properties):
        return
    try:
        await fences.config.add_property(_int("rows_version"))
    except WeaviateBaseError as exc:  # another replica added it first
        if "already exists" not in str(exc):
            raise


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def collection_name(table: str) -> str:
    """Weaviate class names start with a capital letter: `chunks` → `Chunks`."""
    return table[:1].upper() + table[1:]


def _text(name: str, *, filterable: bool = False, array: bool = False) -> Property:
    return Property(
        name=name,
        data_type=DataType.TEXT_ARRAY if array else DataType.TEXT,
        tokenization=Tokenization.FIELD,
        index_searchable=False,
        index_filterable=filterable,
    )


def _int(name: str, *, filterable: bool = False) -> Property:
    return Property(
        name=name, data_type=DataType.INT, index_filterable=filterable, index_range_filters=False
    )


CHUNK_PROPERTIES = [
    _text("chunk_id", filterable=True),
    _text("doc_id", filterable=True),
    _int("version", filterable=True),
    _int("ordinal"),
    _text("title"),
    _text("text"),
    _text("section_path", array=True),
    _int("char_start"),
    _int("char_end"),
    _text("source", filterable=True),
    _text("tags", filterable=True, array=True),
    Property(
        name="search_text",
        data_type=DataType.TEXT,
        tokenization=Tokenization.WORD,
        index_searchable=True,
        index_filterable=False,
    ),
]
FENCE_PROPERTIES = [
    _text("doc_id", filterable=True),
    _int("version", filterable=True),
    Property(name="deleted", data_type=DataType.BOOL, index_filterable=True),
    _int("rows_version"),
]


class WeaviateIndex:
    """`VersionedIndex` on a Weaviate cluster. Connects and creates its collections lazily."""

    def __init__(self, settings: StoreSettings, dim: int) -> None:
        if not settings.weaviate_url:
            raise ValueError("RAG_STORE_WEAVIATE_URL (or WEAVIATE_URL) is not set")
        self.settings, self.dim = settings, dim
        self.settle_s = settings.weaviate_settle_ms / 1000
        """A batch insert is not atomic: objects become visible one by one."""
        self.name = collection_name(settings.table)
        self._client: Any = None
        self._chunks: Any = None
        self._fences: Any = None  # the client's collection objects are loosely typed
        self._lock = asyncio.Lock()

    def _new_client(self) -> Any:
        s = self.settings
        url = urlparse(s.weaviate_url or "")
        secure = url.scheme == "https"
        http_port = url.port or (443 if secure else 80)
        return weaviate.use_async_with_custom(
            http_host=url.hostname or "localhost",
            http_port=http_port,
            http_secure=secure,
            grpc_host=s.weaviate_grpc_host or url.hostname or "localhost",
            grpc_port=s.weaviate_grpc_port,
            grpc_secure=secure if s.weaviate_grpc_secure is None else s.weaviate_grpc_secure,
            auth_credentials=(
                Auth.api_key(s.weaviate_api_key.get_secret_value()) if s.weaviate_api_key else None
            ),
            additional_config=AdditionalConfig(
                timeout=Timeout(
                    init=s.weaviate_timeout_s,
                    query=s.weaviate_timeout_s,
                    insert=s.weaviate_insert_timeout_s,
                )
            ),
        )

    async def open(self) -> None:
        async with self._lock:
            if self._chunks is None:
                await self._call(self._open, "connect")

    async def _open(self) -> None:
        client = self._new_client()
        try:
            await client.connect()
            await self._ensure(client, self.name, CHUNK_PROPERTIES, vectors=True)
            await self._ensure(client, f"{self.name}Fences", FENCE_PROPERTIES, vectors=False)
            level = ConsistencyLevel(self.settings.weaviate_consistency)
            chunks = client.collections.use(self.name).with_consistency_level(level)
            fences = client.collections.use(f"{self.name}Fences").with_consistency_level(level)
            await self._check_existing(chunks)
            await _ensure_rows_version(fences)
        except BaseException:
            await client.close()
            raise
        self._client, self._chunks, self._fences = client, chunks, fences

    async def _check_existing(self, chunks: Any) -> None:
        """Refuse a collection made for another distance or embedding dimension."""
        config = await chunks.config.get()
        metrics = {
            getattr(v.vector_index_config, "distance_metric", None)
            for v in (config.vector_config or {}).values()
        }
        if metrics != {VectorDistances.COSINE}:
            raise ValueError(f"collection {self.name} does not use cosine distance only: {metrics}")
        sample = await chunks.query.fetch_objects(limit=1, include_vector=True)
        for obj in sample.objects:
            dims = {len(v) for v in obj.vector.values()}
            if dims != {self.dim}:
                raise ValueError(
                    f"collection {self.name} holds vectors of dim {dims}, not {self.dim}"
                )

    async def _ensure(
        self, client: Any, name: str, properties: list[Property], *, vectors: bool
    ) -> None:
        if await client.collections.exists(name):
            return
        index = (
            Configure.VectorIndex.hnsw(distance_metric=VectorDistances.COSINE)
            if vectors
            else Configure.VectorIndex.flat(distance_metric=VectorDistances.COSINE)
        )
        try:
            await client.collections.create(
                name,
                properties=properties,
                vector_config=Configure.Vectors.self_provided(vector_index_config=index),
                inverted_index_config=Configure.inverted_index(stopwords_preset=StopwordsPreset.EN),
                replication_config=Configure.replication(
                    factor=self.settings.weaviate_replication_factor
                ),
            )
        except WeaviateBaseError as exc:  # another replica created it first
            if "already exists" not in str(exc) and "already used" not in str(exc):
                raise

    async def _collections(self) -> tuple[Any, Any]:
        if self._chunks is None:
            await self.open()
        return self._chunks, self._fences

    # ---- writes ------------------------------------------------------------------------------

    async def insert_rows(self, docs: Sequence[UpsertDoc]) -> None:
        chunks, _ = await self._collections()
        objects = [
            DataObject(
                uuid=row_uuid(chunk),
                properties=_properties(chunk),
                vector=np.asarray(vector, dtype=np.float32).tolist(),
            )
            for doc in docs
            for chunk, vector in zip(doc.chunks, doc.vectors, strict=True)
        ]
        await self._insert(chunks, objects, "chunk rows")

    async def insert_fences(self, fences: Sequence[DocState]) -> None:
        _, collection = await self._collections()
        objects = [
            DataObject(
                uuid=fence_uuid(f),
                properties={
                    "doc_id": f.doc_id,
                    "version": f.version,
                    "deleted": f.deleted,
                    "rows_version": f.rows,
                },
            )
            for f in fences
        ]
        await self._insert(collection, objects, "fence markers")

    async def _insert(
        self, collection: Any, objects: list[DataObject[Any, Any]], what: str
    ) -> None:
        for start in range(0, len(objects), _INSERT_SLICE):
            part = objects[start : start + _INSERT_SLICE]
            result = await self._call(
                partial(collection.data.insert_many, part), f"insert {what}", write=True
            )
            if result.errors:
                messages = sorted({e.message for e in result.errors.values()})
                reason = (
                    f"Weaviate refused {len(result.errors)} of {len(part)} {what}: "
                    + "; ".join(messages)[:500]
                )
                if any(_transient_text(m) for m in messages):
                    raise TransientError(reason)
                raise PermanentError(reason)

    async def prune_rows(self, fences: Sequence[DocState]) -> None:
        chunks, _ = await self._collections()
        below = Filter.by_property("version")
        await self._delete(
            chunks,
            [
                _doc(f.doc_id)
                & (
                    below.less_or_equal(f.version)
                    if f.deleted
                    else below.less_than(f.version) & below.not_equal(f.rows)
                )
                for f in fences
            ],
        )

    async def delete_markers(self, markers: Sequence[DocState]) -> None:
        _, collection = await self._collections()
        ids = [fence_uuid(m) for m in markers]
        await self._delete(collection, [Filter.by_id().contains_any(ids)])

    async def _delete(self, collection: Any, filters: list[Any]) -> None:
        where = filters[0] if len(filters) == 1 else Filter.any_of(filters)
        while True:
            result = await self._call(
                lambda: collection.data.delete_many(where=where), "delete", write=True
            )
            if result.failed:
                raise TransientError(f"Weaviate failed to delete {result.failed} objects")
            if result.matches < _DELETE_LIMIT:
                return

    # ---- reads -------------------------------------------------------------------------------

    async def candidates(self, request: SearchRequest) -> Candidates:
        chunks, _ = await self._collections()
        where = _filters(request)
        vector = (
            np.asarray(request.vector, dtype=np.float32).tolist()
            if request.vector is not None
            else None
        )
        text = stem_text(request.text) or None
        wants_dense = request.mode in ("dense", "hybrid") and vector is not None
        wants_bm25 = request.mode in ("bm25", "hybrid") and text is not None
        if self.settings.weaviate_hybrid == "native" and wants_dense and wants_bm25:
            response = await self._call(
                lambda: chunks.query.hybrid(
                    query=text,
                    vector=vector,
                    alpha=request.alpha,
                    fusion_type=HybridFusion.RELATIVE_SCORE,
                    query_properties=["search_text"],
                    limit=request.candidates,
                    filters=where,
                    return_properties=_CHUNK_PROPERTIES,
                    return_metadata=MetadataQuery(score=True),
                ),
                "hybrid query",
            )
            fused = [(_chunk(o.properties), float(o.metadata.score)) for o in response.objects]
            return Candidates(dense=[], bm25=[], fused=fused)
        dense, bm25 = await asyncio.gather(
            self._near_vector(chunks, vector, request.candidates, where)
            if wants_dense
            else _nothing(),
            self._bm25(chunks, text or "", request.candidates, where) if wants_bm25 else _nothing(),
        )
        return Candidates(dense=dense, bm25=bm25)

    async def _near_vector(self, chunks: Any, vector: Any, limit: int, where: Any) -> Scored:
        response = await self._call(
            lambda: chunks.query.near_vector(
                near_vector=vector,
                limit=limit,
                filters=where,
                return_properties=_CHUNK_PROPERTIES,
                return_metadata=MetadataQuery(distance=True),
            ),
            "vector query",
        )
        return [(_chunk(o.properties), 1.0 - float(o.metadata.distance)) for o in response.objects]

    async def _bm25(self, chunks: Any, text: str, limit: int, where: Any) -> Scored:
        response = await self._call(
            lambda: chunks.query.bm25(
                query=text,
                query_properties=["search_text"],
                limit=limit,
                filters=where,
                return_properties=_CHUNK_PROPERTIES,
                return_metadata=MetadataQuery(score=True),
            ),
            "bm25 query",
        )
        return [(_chunk(o.properties), float(o.metadata.score)) for o in response.objects]

    async def complete(self, rows: Sequence[ChunkRecord]) -> list[ChunkRecord]:
        """Its lists hold full rows already."""
        return list(rows)

    async def read_fences(self, doc_ids: Collection[str]) -> list[DocState]:
        _, collection = await self._collections()
        ids = list(doc_ids)
        markers: list[DocState] = []
        limit = max(100, 4 * len(ids))
        offset = 0
        while True:
            response = await self._call(
                partial(
                    collection.query.fetch_objects,
                    filters=Filter.by_property("doc_id").contains_any(ids),
                    limit=limit,
                    offset=offset,
                    return_properties=["doc_id", "version", "deleted", "rows_version"],
                ),
                "fence read",
            )
            markers += [
                read_marker(
                    o.properties["doc_id"],
                    int(o.properties["version"]),
                    o.properties["deleted"],
                    _int_or_none(o.properties.get("rows_version")),
                )
                for o in response.objects
            ]
            if len(response.objects) < limit:
                return markers
            offset += limit

    async def read_rows(self, doc_ids: Collection[str]) -> list[UpsertDoc]:
        chunks, _ = await self._collections()
        found = await asyncio.gather(*(self._doc_rows(chunks, doc_id) for doc_id in doc_ids))
        versions: dict[tuple[str, int], list[tuple[ChunkRecord, list[float]]]] = {}
        for chunk, vector in (row for doc_rows in found for row in doc_rows):
            versions.setdefault((chunk.doc_id, chunk.version), []).append((chunk, vector))
        docs = []
        for (doc_id, version), rows in versions.items():
            rows.sort(key=lambda r: r[0].ordinal)
            vectors = np.asarray([vector for _, vector in rows], dtype=np.float32)
            docs.append(UpsertDoc(doc_id, version, [chunk for chunk, _ in rows], vectors))
        return docs

    async def _doc_rows(self, chunks: Any, doc_id: str) -> list[tuple[ChunkRecord, list[float]]]:
        """Every row of the doc, with its vector (one filtered read, in pages)."""
        found: list[tuple[ChunkRecord, list[float]]] = []
        while True:
            response = await self._call(
                partial(
                    chunks.query.fetch_objects,
                    filters=_doc(doc_id),
                    limit=_READ_SLICE,
                    offset=len(found),
                    include_vector=True,
                    return_properties=_CHUNK_PROPERTIES,
                ),
                "row read",
            )
            found += [(_chunk(o.properties), o.vector["default"]) for o in response.objects]
            if len(response.objects) < _READ_SLICE:
                return found

    async def count_rows(self, doc_id: str | None = None) -> int:
        chunks, _ = await self._collections()
        where = None if doc_id is None else _doc(doc_id)
        result = await self._call(
            lambda: chunks.aggregate.over_all(total_count=True, filters=where), "count"
        )
        return int(result.total_count or 0)

    async def optimize(self, *, min_new_versions: int = 0) -> None:
        """Nothing to do: Weaviate compacts its LSM segments and HNSW graph in the background."""

    async def close(self) -> None:
        async with self._lock:
            if self._client is not None:
                await self._client.close()
            self._client = self._chunks = self._fences = None

    async def drop(self) -> None:
        """Delete both collections (a retired index generation; tests and benches)."""
        await self._collections()
        await self._client.collections.delete([self.name, f"{self.name}Fences"])
        await self.close()

    # ---- errors ------------------------------------------------------------------------------

    async def _call(self, op: Callable[[], Awaitable[T]], what: str, *, write: bool = False) -> T:
        """Run one Weaviate call under a deadline, retrying transient failures; classify what
        remains. The deadline also bounds the client's own retries of an unavailable server
        (it backs off for up to a minute, and no setting shortens that)."""
        s = self.settings
        timeout = s.weaviate_insert_timeout_s if write else s.weaviate_timeout_s
        for attempt in range(s.weaviate_retries + 1):
            try:
                return await asyncio.wait_for(op(), timeout)
            except Exception as exc:
                if _permanent(exc):
                    raise PermanentError(f"Weaviate {what}: {_reason(exc)}") from exc
                if not isinstance(exc, _TRANSIENT):
                    raise
                if attempt == s.weaviate_retries:
                    raise TransientError(f"Weaviate {what} failed: {_reason(exc)}") from exc
                await asyncio.sleep(0.05 * 2**attempt * (1 + random.random()))
        raise AssertionError("unreachable")


class WeaviateStore(VersionedStore):
    """`Store` on Weaviate."""

    index: WeaviateIndex

    def __init__(self, settings: StoreSettings, dim: int) -> None:
        super().__init__(WeaviateIndex(settings, dim))


def _properties(chunk: ChunkRecord) -> dict[str, Any]:
    properties = {name: getattr(chunk, name) for name in _CHUNK_PROPERTIES}
    properties["section_path"] = list(chunk.section_path)
    properties["tags"] = list(chunk.tags)
    properties["search_text"] = stem_text(search_text(chunk.title, chunk.section_path, chunk.text))
    return properties


def _chunk(properties: dict[str, Any]) -> ChunkRecord:
    return ChunkRecord(
        chunk_id=properties["chunk_id"],
        doc_id=properties["doc_id"],
        version=int(properties["version"]),
        ordinal=int(properties["ordinal"]),
        title=properties.get("title") or "",
        text=properties.get("text") or "",
        section_path=tuple(properties.get("section_path") or ()),
        char_start=int(properties["char_start"]),
        char_end=int(properties["char_end"]),
        source=properties.get("source") or "",
        tags=tuple(properties.get("tags") or ()),
    )


def _doc(doc_id: str) -> Any:
    return Filter.by_property("doc_id").equal(doc_id)


def _filters(request: SearchRequest) -> Any:
    fields, tags = split_filters(request.filters)
    parts = [Filter.by_property(k).equal(v) for k, v in sorted(fields.items())]
    parts += [Filter.by_property("tags").contains_all([t]) for t in tags]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else Filter.all_of(parts)


async def _nothing() -> Scored:
    return []


def _transient_text(text: str) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in _TRANSIENT_WORDS)


def _permanent(exc: BaseException) -> bool:
    """A refusal of the request itself (4xx), which no retry cures. Bad credentials (401, 403)
    are not: they are the deployment's fault, not the event's, so its events stay pending."""
    if isinstance(exc, WeaviateInvalidInputError | WeaviateInsertInvalidPropertyError):
        return True
    if isinstance(exc, WeaviateInsertManyAllFailedError):  # every object refused, with reasons
        return not _transient_text(str(exc))
    if isinstance(exc, UnexpectedStatusCodeError):
        return 400 <= exc.status_code < 500 and exc.status_code not in (401, 403, 408, 429)
    return False


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
