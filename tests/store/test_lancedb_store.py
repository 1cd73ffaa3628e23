"""LanceDB specifics: commit counts, index folding and compaction, formats and dimensions.

The behaviour both backends share is in `test_store_contract.py`."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import lancedb
import pytest

from shared.errors import TransientError
from shared.settings import StoreSettings
from shared.store.factory import open_store
from shared.store.lancedb_store import LanceDBStore
from shared.store.records import AdvanceDoc, DeleteDoc, DocState, DocWrite, WriteOutcome
from shared.store.versioning import plan
from shared.store.weaviate_store import WeaviateStore
from tests.store.builders import DIM, bm25, dense, upsert

APPLIED, STALE = WriteOutcome.APPLIED, WriteOutcome.STALE


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LanceDBStore]:
    s = LanceDBStore(tmp_path / "index", DIM)
    yield s
    await s.close()


async def test_a_batch_commits_three_table_versions_at_most(store: LanceDBStore) -> None:
    await store.apply([upsert("b", 1, ["bravo one"]), upsert("c", 1, ["charlie one"])])
    chunks, fences = await store.index._tables()
    chunk_v, fence_v = await chunks.version(), await fences.version()
    batch: list[DocWrite] = [
        upsert("a", 1, ["alpha one", "alpha two"]),
        upsert("b", 2, ["bravo two", "bravo three"]),
        DeleteDoc("c", 2),
        upsert("a", 2, ["alpha again"]),
    ]
    assert await store.apply(batch) == [APPLIED] * 4
    # One insert + one prune on the chunks table, one insert + one prune on the fences.
    assert await chunks.version() - chunk_v == 2
    assert await fences.version() - fence_v == 2
    # A replay commits nothing at all.
    chunk_v, fence_v = await chunks.version(), await fences.version()
    assert await store.apply(batch[:2]) == [STALE, APPLIED]
    assert (await chunks.version(), await fences.version()) == (chunk_v, fence_v)


async def test_an_index_of_the_old_format_is_refused(tmp_path: Path) -> None:
    db = await lancedb.connect_async(tmp_path)
    await db.create_table("chunks", data=[{"chunk_id": "c", "vector": [0.0] * DIM}])
    with pytest.raises(ValueError, match="older ragstream"):
        await LanceDBStore(tmp_path, DIM).open()


async def test_a_fence_table_from_before_advances_gets_their_column(tmp_path: Path) -> None:
    """Fence tables written before `rows_version` existed: each marker serves its own rows."""
    old = LanceDBStore(tmp_path, DIM)
    await old.apply([upsert("a", 1, ["apple pie"]), upsert("b", 1, ["banana"])])
    await old.close()
    db = await lancedb.connect_async(tmp_path)
    fences = await db.open_table("chunks_fences")
    await fences.drop_columns(["rows_version"])
    assert "rows_version" not in (await fences.schema()).names

    store = LanceDBStore(tmp_path, DIM)
    try:
        assert await store.fences(["a", "b"]) == {
            "a": DocState("a", 1, False),
            "b": DocState("b", 1, False),
        }
        first = upsert("a", 1, ["apple pie"])
        assert await store.apply([AdvanceDoc("a", 2, first.version)]) == [APPLIED]
        await store.prune()
        assert [
            (h.chunk.text, h.chunk.version) for h in await store.hybrid_search(bm25("apple"))
        ] == [("apple pie", 2)]
        assert await store.current_version("a") == DocState("a", 2, False, rows_version=1)
    finally:
        await store.close()


async def test_rows_added_after_indexing_are_searchable_at_once(store: LanceDBStore) -> None:
    await store.apply([upsert(f"d{i}", 1, [f"common filler text number {i}"]) for i in range(20)])
    await store.optimize()  # folds every row into the FTS index
    fts = {i.name: i for i in await store.index._chunks.list_indices()}["search_text_idx"]
    assert fts.num_indexed_rows == 20 and fts.num_unindexed_rows == 0
    fresh = upsert("new", 1, ["platypus eggs are rare"])
    await store.apply([fresh, upsert("d3", 2, ["rewritten filler"])])
    assert [h.chunk.doc_id for h in await store.hybrid_search(bm25("platypus"))] == ["new"]
    hits = await store.hybrid_search(dense(fresh.vectors[0], k=30))  # 8 axes: ties possible
    assert "new" in {h.chunk.doc_id for h in hits if h.score > 0.9999}
    assert len(hits) == 21
    hits = await store.hybrid_search(bm25("filler", k=50))  # indexed and unindexed together
    assert len(hits) == 20 and {h.chunk.version for h in hits if h.chunk.doc_id == "d3"} == {2}


async def test_optimize_concurrent_with_writes(tmp_path: Path) -> None:
    """Compaction loses commit races to writers; it is retried and never breaks a write."""
    writer, maintainer = LanceDBStore(tmp_path, DIM), LanceDBStore(tmp_path, DIM)
    done = asyncio.Event()

    async def optimize_loop() -> int:
        runs = 0
        while not done.is_set():
            with contextlib.suppress(TransientError):  # gave up on this round: harmless
                await maintainer.optimize()
                runs += 1
        return runs

    try:
        await writer.open()
        task = asyncio.create_task(optimize_loop())
        for v in range(1, 61):
            await writer.apply([upsert(f"d{v % 5}", v, [f"text {v}", f"part {v % 3}"])])
        done.set()
        assert await task > 0
        assert await writer.count_chunks() == 10
        assert [(await writer.current_version(f"d{i}")) for i in range(5)] == [
            DocState(f"d{i}", 55 + (i or 5), False) for i in range(5)
        ]
        assert len(await writer.hybrid_search(bm25("text part", k=50))) == 10
    finally:
        await writer.close()
        await maintainer.close()


async def test_optimize_waits_for_enough_new_versions(store: LanceDBStore) -> None:
    for v in range(1, 6):
        await store.apply([upsert("d", v, [f"text {v}"])])
    chunks, _ = await store.index._tables()
    before = await chunks.version()
    await store.optimize(min_new_versions=before + 1)  # not enough writes yet: nothing happens
    assert await chunks.version() == before
    await store.optimize(min_new_versions=1)
    compacted = await chunks.version()
    assert compacted > before
    await store.optimize(min_new_versions=1)  # nothing written since: nothing to do
    assert await chunks.version() == compacted
    assert [h.chunk.text for h in await store.hybrid_search(bm25("text"))] == ["text 5"]


async def test_optimize_compacts_a_fence_table_that_grew_alone(store: LanceDBStore) -> None:
    """A re-sync of unchanged docs writes only markers: their table is optimized on its own."""
    await store.apply([upsert("d", 1, ["text"]), upsert("e", 1, ["more text"])])
    await store.optimize(min_new_versions=1)
    chunks, fences = await store.index._tables()
    rows_at = await chunks.version()
    for v in range(2, 8):
        await store.apply([AdvanceDoc("d", v, 1)])
    assert await chunks.version() == rows_at  # no rows were written (nor pruned)
    markers_at = await fences.version()

    await store.optimize(min_new_versions=5)

    assert await chunks.version() == rows_at
    assert await fences.version() > markers_at  # optimized on its own count
    assert await store.current_version("d") == DocState("d", 7, False, rows_version=1)


def test_plan() -> None:
    fences = {"a": DocState("a", 3, False), "t": DocState("t", 3, True)}
    writes: list[DocWrite] = [
        upsert("a", 3, []),  # equal-version replay: applied, changes nothing
        upsert("a", 2, []),
        DeleteDoc("a", 3),  # a delete must be newer than the served version
        upsert("t", 3, []),
        DeleteDoc("t", 4),
        upsert("t", 5, []),
        upsert("n", 1, []),
    ]
    outcomes, winners = plan(writes, fences)
    assert outcomes == [APPLIED, STALE, STALE, STALE, APPLIED, APPLIED, APPLIED]
    assert {d: (w.version, type(w).__name__) for d, w in winners.items()} == {
        "a": (3, "UpsertDoc"),
        "t": (5, "UpsertDoc"),
        "n": (1, "UpsertDoc"),
    }


async def test_factory_and_dimension_check(tmp_path: Path) -> None:
    store = open_store(StoreSettings(lancedb_path=tmp_path, table="t"), DIM)
    assert isinstance(store, LanceDBStore)
    await store.apply([upsert("a", 1, ["x"])])
    await store.close()
    other = LanceDBStore(tmp_path, DIM * 2, table="t")
    with pytest.raises(ValueError, match="dim"):
        await other.open()
    weaviate = StoreSettings(backend="weaviate", weaviate_url="http://127.0.0.1:1")
    assert isinstance(open_store(weaviate, DIM), WeaviateStore)  # connects lazily
    with pytest.raises(ValueError, match="WEAVIATE_URL"):
        open_store(StoreSettings(backend="weaviate", weaviate_url=None), DIM)
