"""What happened to the events a scenario sent: acks, dead letters, and the index itself.

The index is checked against what it must hold, computed independently: each doc's newest
version chunked locally with the same chunker gives its exact set of (deterministic) chunk ids.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlparse

import lancedb
import weaviate
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.chunker.chunking import Chunker, load_tokenizer
from shared import wire
from shared.contracts import DeadLetter, DocIndexed, DocUpsert
from shared.settings import StoreSettings
from shared.store.records import DocState
from shared.store.versioning import fence_of
from shared.store.weaviate_store import collection_name

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
Key = tuple[str, int]
RawEntry = tuple[bytes, dict[bytes, bytes]]


@dataclass
class Settlement:
    """Acks and dead letters seen for a scenario's docs (by doc-id prefix)."""

    acks: Counter[Key] = field(default_factory=Counter)
    outcomes: dict[Key, str] = field(default_factory=dict)
    letters: list[DeadLetter] = field(default_factory=list)

    @property
    def redelivered(self) -> int:
        """Acks beyond one per (doc, version): work done twice (harmless, index is idempotent)."""
        return sum(n - 1 for n in self.acks.values())


class Follower:
    """Reads `indexed` and `dlq` from where they were when the scenario began; survives restarts."""

    def __init__(self, indexed: str, dlq: str) -> None:
        self.cursors = {indexed: "0-0", dlq: "0-0"}
        self.indexed, self.dlq = indexed, dlq

    async def mark(self, redis: Redis) -> None:
        for stream in self.cursors:
            newest = cast(list[RawEntry], await redis.xrevrange(stream, count=1))
            self.cursors[stream] = newest[0][0].decode() if newest else "0-0"

    async def poll(self, redis: Redis, prefix: str, into: Settlement) -> None:
        for stream in self.cursors:
            while True:
                page = cast(
                    list[RawEntry],
                    await redis.xrange(stream, min=f"({self.cursors[stream]}", count=1000),
                )
                for entry_id, fields in page:
                    self.cursors[stream] = entry_id.decode()
                    self._settle(stream, fields, prefix, into)
                if len(page) < 1000:
                    break

    def _settle(
        self, stream: str, fields: dict[bytes, bytes], prefix: str, into: Settlement
    ) -> None:
        if stream == self.dlq:
            letter = DeadLetter.model_validate_json(wire.payload_of(fields))
            if (letter.doc_id or "").startswith(prefix):
                into.letters.append(letter)
                if letter.version is not None:
                    into.outcomes.setdefault((letter.doc_id or "", letter.version), "dead_lettered")
            return
        ack = DocIndexed.model_validate_json(wire.payload_of(fields))
        if ack.doc_id.startswith(prefix):
            key = (ack.doc_id, ack.version)
            into.acks[key] += 1
            into.outcomes.setdefault(key, ack.outcome.value)


async def settle(
    connect: Any,
    follower: Follower,
    prefix: str,
    expected: Iterable[Key],
    *,
    letters: int = 0,
    within_s: float = 300.0,
) -> Settlement:
    """Poll until every expected key has an outcome and `letters` unkeyed letters arrived."""
    waiting = set(expected)
    result = Settlement()
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            async with connect() as redis:
                await follower.poll(redis, prefix, result)
        except REDIS_DOWN:
            await asyncio.sleep(0.5)
            continue
        if waiting <= result.outcomes.keys() and len(result.letters) >= letters:
            return result
        await asyncio.sleep(0.3)
    return result


@dataclass
class IndexCheck:
    indexed: int
    lost: int
    duplicated: int
    rows: int

    def as_dict(self) -> dict[str, int]:
        return {"indexed": self.indexed, "lost": self.lost, "duplicated": self.duplicated}


class Expectation:
    """Each doc's newest version, chunked locally: the exact chunk ids the index must hold."""

    def __init__(self) -> None:
        self.chunker = Chunker(load_tokenizer(), 256)
        self.docs: dict[str, tuple[int, frozenset[str]]] = {}

    def add(self, doc: DocUpsert) -> None:
        current = self.docs.get(doc.doc_id)
        if current is None or doc.version > current[0]:
            ids = frozenset(c.chunk_id for c in self.chunker.chunk(doc))
            self.docs[doc.doc_id] = (doc.version, ids)


def check_index(store: StoreSettings, prefix: str, expected: Expectation) -> IndexCheck:
    """Docs under `prefix` exactly as expected; `duplicated` counts repeated chunk ids, rows of
    a version other than the doc's fence, and rows nobody expected."""
    rows, fences = _read_index(store, prefix)
    ids = Counter(r["chunk_id"] for r in rows)
    duplicated = sum(n - 1 for n in ids.values())
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_doc.setdefault(row["doc_id"], []).append(row)
    indexed = 0
    for doc_id, (version, chunk_ids) in expected.docs.items():
        held = by_doc.get(doc_id, [])
        if (
            fences.get(doc_id) == version
            and {r["chunk_id"] for r in held} == chunk_ids
            and all(r["version"] == version for r in held)
        ):
            indexed += 1
    for row in rows:
        want = expected.docs.get(row["doc_id"])
        if (
            want is None
            or row["chunk_id"] not in want[1]
            or row["version"] != fences.get(row["doc_id"])
        ):
            duplicated += 1
    return IndexCheck(indexed, len(expected.docs) - indexed, duplicated, len(rows))


def _read_index(store: StoreSettings, prefix: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Every row of the docs under `prefix`, and each such doc's served version (no tombstones),
    read straight from the backend, not through the `Store` under test."""
    rows, markers = (_read_lancedb if store.backend == "lancedb" else _read_weaviate)(store)
    rows = [r for r in rows if r["doc_id"].startswith(prefix)]
    fences = fence_of(
        DocState(m["doc_id"], int(m["version"]), bool(m["deleted"]))
        for m in markers
        if m["doc_id"].startswith(prefix)
    )
    return rows, {d: f.version for d, f in fences.items() if not f.deleted}


Rows = list[dict[str, Any]]


def _read_lancedb(store: StoreSettings) -> tuple[Rows, Rows]:
    if not store.lancedb_path.exists():
        return [], []
    db = lancedb.connect(store.lancedb_path)
    chunks = db.open_table(store.table).search().select(["chunk_id", "doc_id", "version"])
    fences = db.open_table(f"{store.table}_fences").search()
    markers = fences.select(["doc_id", "version", "deleted"]).limit(None).to_arrow()
    return list(chunks.limit(None).to_arrow().to_pylist()), list(markers.to_pylist())


def _read_weaviate(store: StoreSettings) -> tuple[Rows, Rows]:
    url = urlparse(store.weaviate_url or "")
    client = weaviate.connect_to_custom(
        http_host=url.hostname or "127.0.0.1", http_port=url.port or 80, http_secure=False,
        grpc_host=url.hostname or "127.0.0.1", grpc_port=store.weaviate_grpc_port,
        grpc_secure=False,
    )  # fmt: skip
    name = collection_name(store.table)
    try:
        rows = client.collections.use(name).iterator(
            return_properties=["chunk_id", "doc_id", "version"]
        )
        markers = client.collections.use(f"{name}Fences").iterator(
            return_properties=["doc_id", "version", "deleted"]
        )
        return [dict(o.properties) for o in rows], [dict(o.properties) for o in markers]
    finally:
        client.close()
