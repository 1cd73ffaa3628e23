"""LanceDB's ANN index: built by `optimize` past `ann_min_rows` (not before), rows added after it
are found at once and folded in by the next `optimize`, recall@10 against an exact scan, and
the fenced reads of `shared.store.versioning` unchanged on top of it.

A threshold of 2,000 rows keeps this fast; the 1M-row figures are `bench/scale.py`'s."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.settings import StoreSettings
from shared.store.lancedb_store import LanceDBStore
from shared.store.records import ChunkRecord, DeleteDoc, SearchRequest, UpsertDoc

DIM = 32
THRESHOLD = 2_000
PER_DOC = 50
RNG = np.random.default_rng(7)
CENTRES = RNG.normal(size=(40, DIM)).astype(np.float32)


def unit(m: np.ndarray) -> np.ndarray:
    unit_rows: np.ndarray = m / np.linalg.norm(m, axis=-1, keepdims=True)
    return unit_rows.astype(np.float32)


def clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around 40 centres (embeddings cluster by topic; uniform noise does not)."""
    centres = CENTRES[rng.integers(0, len(CENTRES), n)]
    return unit(centres + rng.normal(scale=0.6, size=(n, DIM)).astype(np.float32))


def doc(doc_id: str, version: int, vectors: np.ndarray) -> UpsertDoc:
    chunks = [
        ChunkRecord(
            chunk_id=f"{doc_id}-{version}-{i}",
            doc_id=doc_id,
            version=version,
            ordinal=i,
            title=doc_id,
            text=f"chunk {i} of {doc_id} version {version}",
            section_path=(),
            char_start=0,
            char_end=10,
            source="",
            tags=(),
        )
        for i in range(len(vectors))
    ]
    return UpsertDoc(doc_id, version, chunks, vectors)


def docs(first: int, n_docs: int, rng: np.random.Generator) -> list[UpsertDoc]:
    return [doc(f"d{i}", 1, clustered(PER_DOC, rng)) for i in range(first, first + n_docs)]


def dense(vector: np.ndarray, k: int = 10) -> SearchRequest:
    return SearchRequest(text="", vector=vector, mode="dense", k=k)


async def vector_indices(store: LanceDBStore) -> list[Any]:
    chunks, _ = await store.index._tables()
    return [i for i in await chunks.list_indices() if "vector" in i.columns]


async def exact(store: LanceDBStore, vector: np.ndarray, k: int = 10) -> list[str]:
    chunks, _ = await store.index._tables()
    query = chunks.query().nearest_to(vector).distance_type("cosine").bypass_vector_index()
    rows = await query.limit(k).select(["row_id", "_distance"]).to_arrow()
    return [str(r) for r in rows.column("row_id").to_pylist()]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LanceDBStore]:
    settings = StoreSettings(lancedb_path=tmp_path, ann_min_rows=THRESHOLD)
    s = LanceDBStore(tmp_path, DIM, settings=settings)
    yield s
    await s.close()


@pytest.fixture
async def indexed(store: LanceDBStore) -> LanceDBStore:
    """A store past the threshold, optimised: its vectors are in an IVF-PQ index."""
    rng = np.random.default_rng(1)
    for first in range(0, 48, 12):
        await store.apply(docs(first, 12, rng))
    await store.optimize()
    assert await store.count_chunks() == 48 * PER_DOC
    return store


async def test_the_index_is_built_past_the_threshold_and_not_before(store: LanceDBStore) -> None:
    rng = np.random.default_rng(2)
    await store.apply(docs(0, THRESHOLD // PER_DOC - 1, rng))  # one doc short
    await store.optimize()
    assert await vector_indices(store) == []
    query = clustered(1, rng)[0]
    hits = await store.hybrid_search(dense(query))
    chunks, _ = await store.index._tables()
    assert "ANN" not in await chunks.query().nearest_to(query).explain_plan()
    assert [h.chunk.row_id for h in hits] == await exact(store, query)  # exact below it

    await store.apply(docs(THRESHOLD // PER_DOC, 1, rng))
    assert await vector_indices(store) == []  # applies never build it: optimize does
    await store.optimize()
    [index] = await vector_indices(store)
    assert index.index_type == "IvfPq" and index.num_indexed_rows == THRESHOLD
    assert index.index_details["metric_type"] == "COSINE"
    assert "ANN" in await chunks.query().nearest_to(query).explain_plan()
    await store.optimize()  # kept (and updated), never a second one
    assert [i.name for i in await vector_indices(store)] == [index.name]


async def test_the_index_is_rebuilt_once_the_table_has_grown(tmp_path: Path) -> None:
    settings = StoreSettings(ann_min_rows=THRESHOLD, ann_retrain_growth=2)
    store = LanceDBStore(tmp_path, DIM, settings=settings)
    rng = np.random.default_rng(6)
    try:
        await store.apply(docs(0, THRESHOLD // PER_DOC, rng))
        await store.optimize()
        assert [i.name for i in await vector_indices(store)] == [f"vector_ann_{THRESHOLD}"]
        await store.apply(docs(THRESHOLD // PER_DOC, THRESHOLD // PER_DOC - 1, rng))
        await store.optimize()  # grown 1.975 times: folded in, not rebuilt
        [index] = await vector_indices(store)
        assert (index.name, index.num_unindexed_rows) == (f"vector_ann_{THRESHOLD}", 0)
        await store.apply(docs(2 * THRESHOLD // PER_DOC, 1, rng))
        await store.optimize()  # twice the rows it was trained on: rebuilt, the old one dropped
        [index] = await vector_indices(store)
        assert (index.name, index.num_indexed_rows) == (
            f"vector_ann_{2 * THRESHOLD}",
            2 * THRESHOLD,
        )
        query = clustered(1, rng)[0]
        hits = await store.hybrid_search(dense(query))
        assert len({h.chunk.row_id for h in hits} & set(await exact(store, query))) >= 8
    finally:
        await store.close()


async def test_rows_added_after_the_index_are_found_then_folded_in(indexed: LanceDBStore) -> None:
    rng = np.random.default_rng(3)
    fresh = doc("fresh", 1, clustered(5, rng))
    await indexed.apply([fresh])
    [index] = await vector_indices(indexed)
    assert index.num_unindexed_rows == 5
    for i, vector in enumerate(fresh.vectors):
        top = (await indexed.hybrid_search(dense(vector, k=1)))[0]
        assert (top.chunk.chunk_id, round(top.score, 4)) == (f"fresh-1-{i}", 1.0)
    await indexed.optimize()  # folds them into the ANN index
    [index] = await vector_indices(indexed)
    assert (index.num_indexed_rows, index.num_unindexed_rows) == (48 * PER_DOC + 5, 0)
    for i, vector in enumerate(fresh.vectors):
        top = (await indexed.hybrid_search(dense(vector, k=1)))[0]
        assert (top.chunk.chunk_id, round(top.score, 4)) == (f"fresh-1-{i}", 1.0)


async def test_recall_at_10_against_an_exact_scan(indexed: LanceDBStore) -> None:
    queries = clustered(100, np.random.default_rng(4))
    recalls, score_errors = [], []
    for query in queries:
        hits = await indexed.hybrid_search(dense(query))
        truth = await exact(indexed, query)
        recalls.append(len({h.chunk.row_id for h in hits} & set(truth)) / len(truth))
        # the refine step re-scores by the stored vectors: exact cosines, not quantised ones
        cosines = np.stack([_VECTORS[h.chunk.row_id] for h in hits]) @ query
        score_errors.append(np.abs(cosines - [h.score for h in hits]).max())
    assert np.mean(recalls) >= 0.95
    assert max(score_errors) < 1e-4


_VECTORS: dict[str, np.ndarray] = {}


@pytest.fixture(autouse=True)
def _remember_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every vector written, by row id (to check the scores dense search returns)."""
    _VECTORS.clear()
    apply = LanceDBStore.apply

    async def remembering(self: LanceDBStore, writes: Any, **kwargs: Any) -> Any:
        for w in writes:
            if isinstance(w, UpsertDoc):
                for chunk, vector in zip(w.chunks, w.vectors, strict=True):
                    _VECTORS[chunk.row_id] = np.asarray(vector)
        return await apply(self, writes, **kwargs)

    monkeypatch.setattr(LanceDBStore, "apply", remembering)


async def test_fenced_reads_are_unchanged_over_the_index(indexed: LanceDBStore) -> None:
    old = _VECTORS["d5-1-0@1"]
    assert (await indexed.hybrid_search(dense(old, k=1)))[0].chunk.doc_id == "d5"
    rng = np.random.default_rng(5)
    # A doc's new version: served whole, its old rows never (they are pruned).
    v2 = doc("d5", 2, clustered(PER_DOC, rng))
    await indexed.apply([v2, DeleteDoc("d6", 2)])
    # A version whose rows were written but whose fence marker never was (a writer that died
    # between steps 2 and 3 of `apply`): invisible, even once folded into the ANN index.
    orphan = doc("d7", 2, clustered(3, rng))
    await indexed.index.insert_rows([orphan])
    await indexed.optimize()
    assert (await vector_indices(indexed))[0].num_unindexed_rows == 0
    for query in (old, *v2.vectors[:5], *orphan.vectors, _VECTORS["d6-1-0@1"]):
        hits = await indexed.hybrid_search(dense(query, k=20))
        assert len(hits) == 20
        served = {(h.chunk.doc_id, h.chunk.version) for h in hits}
        assert ("d5", 1) not in served and ("d7", 2) not in served
        assert "d6" not in {doc_id for doc_id, _ in served}
    top = await indexed.hybrid_search(dense(v2.vectors[0], k=1))
    assert (top[0].chunk.chunk_id, top[0].chunk.version) == ("d5-2-0", 2)
    d7 = {h.chunk.chunk_id for h in await indexed.hybrid_search(dense(orphan.vectors[0], k=100))}
    assert {f"d7-1-{i}" for i in range(PER_DOC)} & d7  # d7's served version is still v1
