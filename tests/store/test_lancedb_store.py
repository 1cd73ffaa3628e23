"""LanceDBStore on a real LanceDB in a temp dir: fencing, idempotence, freshness, concurrency."""

import asyncio
import contextlib
import hashlib
import random
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from shared.contracts.chunks import chunk_id
from shared.errors import PermanentError, TransientError
from shared.settings import StoreSettings
from shared.store.factory import open_store
from shared.store.lancedb_store import STATE_SCHEMA, LanceDBStore, _merge, plan
from shared.store.records import (
    ChunkRecord,
    DeleteDoc,
    DocState,
    DocWrite,
    SearchRequest,
    UpsertDoc,
    WriteOutcome,
)

DIM = 8
REPO = Path(__file__).resolve().parents[2]
APPLIED, STALE = WriteOutcome.APPLIED, WriteOutcome.STALE


def vec(i: int) -> np.ndarray:
    """A deterministic unit vector pointing mostly along axis i."""
    v = np.full(DIM, 0.05, dtype=np.float32)
    v[i % DIM] = 1.0
    return v / np.linalg.norm(v)


def upsert(doc_id: str, version: int, texts: list[str], *, source: str = "") -> UpsertDoc:
    """Chunk ids as the chunker makes them: same text at the same ordinal -> same id."""
    chunks = [
        ChunkRecord(
            chunk_id=chunk_id(doc_id, i, hashlib.sha1(t.encode()).hexdigest()),
            doc_id=doc_id,
            version=version,
            ordinal=i,
            title=f"Title of {doc_id}",
            text=t,
            section_path=("Intro", f"Part {i}"),
            char_start=i * 100,
            char_end=i * 100 + len(t),
            source=source,
        )
        for i, t in enumerate(texts)
    ]
    seed = int(hashlib.sha1(f"{doc_id}{version}".encode()).hexdigest(), 16)
    vectors = np.stack([vec(seed + i) for i in range(len(texts))]) if texts else np.empty((0, DIM))
    return UpsertDoc(doc_id, version, chunks, vectors.astype(np.float32))


def bm25(text: str, **kw: object) -> SearchRequest:
    return SearchRequest(text=text, vector=None, mode="bm25", **kw)  # type: ignore[arg-type]


def dense(v: np.ndarray, **kw: object) -> SearchRequest:
    return SearchRequest(text="", vector=v, mode="dense", **kw)  # type: ignore[arg-type]


async def served_ids(store: LanceDBStore, doc_id: str) -> set[str]:
    table = await store._chunks.query().where(f"doc_id = '{doc_id}'").to_arrow()
    return set(table["chunk_id"].to_pylist())


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LanceDBStore]:
    s = LanceDBStore(tmp_path / "index", DIM)
    yield s
    await s.close()


async def test_upsert_is_searchable_by_bm25_and_dense(store: LanceDBStore) -> None:
    doc = upsert("a", 1, ["Kangaroos hop across Australia", "Glucose feeds neurons", "Zebras"])
    assert await store.apply([doc, upsert("b", 1, ["Insulin lowers blood glucose"])]) == [
        APPLIED,
        APPLIED,
    ]
    assert await store.count_chunks() == 4
    assert await store.count_chunks("a") == 3
    assert await store.current_version("a") == DocState("a", 1, False)
    assert await store.current_version("nope") is None

    hits = await store.hybrid_search(bm25("kangaroo hopping"))  # stemmed, case-folded
    assert [h.chunk.text for h in hits] == ["Kangaroos hop across Australia"]
    assert hits[0].chunk == doc.chunks[0] and hits[0].bm25_score == hits[0].score > 0
    assert {h.chunk.doc_id for h in await store.hybrid_search(bm25("glucose"))} == {"a", "b"}
    assert await store.hybrid_search(bm25("the of and")) == []  # stop words only

    hits = await store.hybrid_search(dense(doc.vectors[1], k=2))
    assert hits[0].chunk.chunk_id == doc.chunks[1].chunk_id
    assert hits[0].score == pytest.approx(1.0, abs=1e-5) and len(hits) == 2

    hybrid = SearchRequest(text="zebras", vector=doc.vectors[1], k=10)
    hits = await store.hybrid_search(hybrid)
    by_text = {h.chunk.text: h for h in hits}
    assert by_text["Zebras"].bm25_score is not None
    assert by_text["Glucose feeds neurons"].dense_score == pytest.approx(1.0, abs=1e-5)
    assert hits == sorted(hits, key=lambda h: -h.score)


async def test_filters_and_bad_requests(store: LanceDBStore) -> None:
    await store.apply(
        [upsert("a", 1, ["shared words here"], source="wiki"), upsert("b", 1, ["shared words"])]
    )
    assert {h.chunk.doc_id for h in await store.hybrid_search(bm25("shared"))} == {"a", "b"}
    hits = await store.hybrid_search(bm25("shared", filters={"source": "wiki"}))
    assert [h.chunk.doc_id for h in hits] == ["a"]
    hits = await store.hybrid_search(dense(vec(0), filters={"doc_id": "b"}))
    assert [h.chunk.doc_id for h in hits] == ["b"]
    hits = await store.hybrid_search(bm25("shared", filters={"doc_id": "it's"}))  # quoting
    assert hits == []
    with pytest.raises(ValueError, match="filter"):
        await store.hybrid_search(bm25("shared", filters={"title": "x"}))
    with pytest.raises(ValueError, match="vector"):
        await store.hybrid_search(SearchRequest(text="shared", vector=None))


async def test_update_replaces_old_chunks(store: LanceDBStore) -> None:
    await store.apply([upsert("a", 1, ["apple pie", "banana bread", "cherry tart"])])
    v2 = upsert("a", 2, ["apple pie", "durian soup"])  # first chunk id is shared with v1
    assert await store.apply([v2]) == [APPLIED]
    assert await store.count_chunks("a") == 2
    assert await served_ids(store, "a") == {c.chunk_id for c in v2.chunks}
    assert await store.hybrid_search(bm25("banana")) == []
    hits = await store.hybrid_search(bm25("apple durian"))
    assert {h.chunk.version for h in hits} == {2} and len(hits) == 2


async def test_delete_keeps_a_tombstone(store: LanceDBStore) -> None:
    await store.apply([upsert("a", 2, ["apple pie", "banana bread"])])
    assert await store.apply([DeleteDoc("a", 3)]) == [APPLIED]
    assert await store.count_chunks("a") == 0
    assert await store.current_version("a") == DocState("a", 3, True)
    assert await store.hybrid_search(bm25("apple")) == []
    # Late or replayed writes at or below the tombstone change nothing.
    assert await store.apply([upsert("a", 2, ["apple pie"])]) == [STALE]
    assert await store.apply([upsert("a", 3, ["apple pie"])]) == [STALE]
    assert await store.apply([DeleteDoc("a", 3), DeleteDoc("a", 1)]) == [STALE, STALE]
    assert await store.count_chunks("a") == 0
    # A newer version brings the doc back.
    assert await store.apply([upsert("a", 4, ["apple crumble"])]) == [APPLIED]
    assert [h.chunk.version for h in await store.hybrid_search(bm25("apple"))] == [4]
    # Deleting a doc never seen still leaves a tombstone.
    assert await store.apply([DeleteDoc("z", 5), upsert("z", 4, ["late"])]) == [APPLIED, STALE]
    assert await store.current_version("z") == DocState("z", 5, True)


async def test_replay_changes_nothing(store: LanceDBStore) -> None:
    doc = upsert("a", 1, ["apple pie", "banana bread", "cherry tart"])
    await store.apply([doc])
    ids, versions = await served_ids(store, "a"), await store._chunks.version()
    for _ in range(2):
        assert await store.apply([doc]) == [APPLIED]
    assert await served_ids(store, "a") == ids
    assert await store.count_chunks() == 3
    assert await store._chunks.version() == versions  # not even a new table version


async def test_older_version_is_stale(store: LanceDBStore) -> None:
    await store.apply([upsert("a", 5, ["fifth edition"])])
    assert await store.apply([upsert("a", 4, ["fourth edition"])]) == [STALE]
    assert await store.current_version("a") == DocState("a", 5, False)
    assert [h.chunk.text for h in await store.hybrid_search(bm25("edition"))] == ["fifth edition"]


async def test_batch_of_several_docs_in_few_commits(store: LanceDBStore) -> None:
    await store.apply([upsert("b", 1, ["bravo one"]), upsert("c", 1, ["charlie one"])])
    chunk_v, state_v = await store._chunks.version(), await store._state.version()
    batch: list[DocWrite] = [
        upsert("a", 1, ["alpha one", "alpha two"]),
        upsert("b", 2, ["bravo two", "bravo three"]),
        DeleteDoc("c", 2),
        upsert("a", 2, ["alpha again"]),  # supersedes a@1 within the batch
        upsert("b", 1, ["bravo one"]),  # older than b@2 in the same batch
        upsert("d", 1, []),  # an empty doc is a valid version
        UpsertDoc("e", 1, [], np.empty(0, np.float32)),  # whatever the shape of no vectors
    ]
    assert await store.apply(batch) == [APPLIED] * 4 + [STALE, APPLIED, APPLIED]
    assert {d: await store.count_chunks(d) for d in "abcd"} == {"a": 1, "b": 2, "c": 0, "d": 0}
    assert await store.current_version("c") == DocState("c", 2, True)
    assert await store.current_version("d") == DocState("d", 1, False)
    assert await store.current_version("e") == DocState("e", 1, False)
    # One merge + one delete on the chunks table, one merge on the fence table.
    assert await store._chunks.version() - chunk_v == 2
    assert await store._state.version() - state_v == 1


async def test_invalid_writes_are_rejected_before_anything_is_written(
    store: LanceDBStore,
) -> None:
    good = upsert("a", 1, ["fine"])
    bad = UpsertDoc("b", 1, upsert("b", 1, ["x", "y"]).chunks, np.zeros((1, DIM), np.float32))
    with pytest.raises(PermanentError, match="shape"):
        await store.apply([good, bad])
    wrong_doc = UpsertDoc("c", 1, good.chunks, good.vectors)
    with pytest.raises(PermanentError, match="not a chunk of"):
        await store.apply([wrong_doc])
    assert await store.count_chunks() == 0
    assert await store.current_version("a") is None


async def test_rows_added_after_indexing_are_searchable_at_once(store: LanceDBStore) -> None:
    await store.apply([upsert(f"d{i}", 1, [f"common filler text number {i}"]) for i in range(20)])
    await store.optimize()  # folds every row into the FTS index
    fts = {i.name: i for i in await store._chunks.list_indices()}["search_text_idx"]
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
    chunks, _ = await store._tables()
    before = await chunks.version()
    await store.optimize(min_new_versions=before + 1)  # not enough writes yet: nothing happens
    assert await chunks.version() == before
    await store.optimize(min_new_versions=1)
    compacted = await chunks.version()
    assert compacted > before
    await store.optimize(min_new_versions=1)  # nothing written since: nothing to do
    assert await chunks.version() == compacted
    assert [h.chunk.text for h in await store.hybrid_search(bm25("text"))] == ["text 5"]


async def test_crash_between_steps_is_hidden_then_healed_by_replay(store: LanceDBStore) -> None:
    await store.apply([upsert("a", 1, ["old apple", "old banana"])])
    v2 = upsert("a", 2, ["new apple"])
    # Crash after step 2: v2 chunks written, fence not advanced -> v1 stays the served version.
    await _merge(store._chunks, "chunk_id", store._rows([v2]))
    assert await store.count_chunks("a") == 3
    assert {h.chunk.version for h in await store.hybrid_search(bm25("apple"))} == {1}
    # Crash after step 3: fence advanced, old chunks not yet pruned -> only v2 is served.
    await _merge(store._state, "doc_id", _fence_table("a", 2))
    assert [h.chunk.text for h in await store.hybrid_search(bm25("apple banana"))] == ["new apple"]
    # The redelivered write heals the index.
    assert await store.apply([v2]) == [APPLIED]
    assert await served_ids(store, "a") == {v2.chunks[0].chunk_id}


def _fence_table(doc_id: str, version: int) -> pa.Table:
    return pa.Table.from_pylist(
        [{"doc_id": doc_id, "version": version, "deleted": False}], schema=STATE_SCHEMA
    )


async def test_two_instances_see_each_others_writes(tmp_path: Path) -> None:
    reader, writer = LanceDBStore(tmp_path, DIM), LanceDBStore(tmp_path, DIM)
    try:
        await reader.open()  # opened before any write: must not serve a cached snapshot
        assert await reader.count_chunks() == 0
        await writer.apply([upsert("a", 1, ["wombat burrows"])])
        assert [h.chunk.doc_id for h in await reader.hybrid_search(bm25("wombat"))] == ["a"]
        await reader.apply([upsert("a", 2, ["echidna spines"])])
        assert await writer.current_version("a") == DocState("a", 2, False)
        assert [h.chunk.version for h in await writer.hybrid_search(bm25("echidna"))] == [2]
        assert await writer.hybrid_search(bm25("wombat")) == []
    finally:
        await reader.close()
        await writer.close()


async def test_a_write_from_another_process_is_visible_at_once(tmp_path: Path) -> None:
    reader = LanceDBStore(tmp_path, DIM)
    await reader.open()
    script = textwrap.dedent(
        f"""
        import asyncio, numpy as np
        from shared.store.lancedb_store import LanceDBStore
        from shared.store.records import ChunkRecord, UpsertDoc
        async def main():
            store = LanceDBStore({str(tmp_path)!r}, {DIM})
            chunk = ChunkRecord("c1", "p", 1, 0, "", "quokka smiles", (), 0, 13)
            vectors = np.eye(1, {DIM}, dtype=np.float32)
            await store.apply([UpsertDoc("p", 1, [chunk], vectors)])
            await store.close()
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, cwd=REPO)
    assert await proc.wait() == 0
    try:
        assert [h.chunk.chunk_id for h in await reader.hybrid_search(bm25("quokka"))] == ["c1"]
    finally:
        await reader.close()


@pytest.mark.parametrize("seed", range(3))
async def test_concurrent_appliers_converge_on_the_newest(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    vocab = ["alpha", "beta", "gamma", "delta", "omega"]
    versions = {
        v: upsert("x", v, [f"{rng.choice(vocab)} text" for _ in range(rng.randint(1, 4))])
        for v in range(1, 13)
    }
    writes: list[DocWrite] = [
        *versions.values(),
        DeleteDoc("x", 6),
    ]  # a delete in the middle of the history
    writes += writes[:4]  # and some redeliveries
    rng.shuffle(writes)
    stores = [LanceDBStore(tmp_path, DIM) for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await asyncio.gather(*(stores[i % len(stores)].apply([w]) for i, w in enumerate(writes)))
        newest = versions[12]
        assert await stores[0].current_version("x") == DocState("x", 12, False)
        assert await served_ids(stores[0], "x") == {c.chunk_id for c in newest.chunks}
        assert await stores[0].count_chunks() == len(newest.chunks)
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_redeliveries_insert_each_row_once(tmp_path: Path) -> None:
    doc = upsert("x", 1, ["one", "two", "three"])
    stores = [LanceDBStore(tmp_path, DIM) for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        outcomes = await asyncio.gather(*(stores[i % 3].apply([doc]) for i in range(9)))
        assert outcomes == [[APPLIED]] * 9
        assert await stores[0].count_chunks() == 3
        assert await stores[0]._state.count_rows() == 1
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_processes_converge(tmp_path: Path) -> None:
    """Two writer processes, interleaved versions of one doc plus a stale tail."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys, numpy as np
        from shared.store.lancedb_store import LanceDBStore
        from shared.store.records import ChunkRecord, UpsertDoc
        def doc(v):
            n = 1 + v % 3
            chunks = [ChunkRecord(f"c{{i}}-{{v % 2}}", "x", v, i, "", f"text {{v}}", (), 0, 1)
                      for i in range(n)]
            return UpsertDoc("x", v, chunks, np.eye(n, {DIM}, dtype=np.float32))
        async def main(versions):
            store = LanceDBStore({str(tmp_path)!r}, {DIM})
            for v in versions:
                await store.apply([doc(v)])
            await store.close()
        asyncio.run(main([int(v) for v in sys.argv[1:]]))
        """
    )
    first = LanceDBStore(tmp_path, DIM)
    await first.open()  # create the tables once, then race the writers
    await first.close()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, *map(str, vs), cwd=REPO, stderr=subprocess.PIPE
        )
        for vs in ([1, 3, 5, 7, 9, 11, 2], [2, 4, 6, 8, 10, 12, 1])
    ]
    for proc in procs:
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
    store = LanceDBStore(tmp_path, DIM)
    try:
        assert await store.current_version("x") == DocState("x", 12, False)
        assert await served_ids(store, "x") == {"c0-0"}  # 12 % 3 + 1 = 1 chunk, suffix 0
        assert await store.count_chunks() == 1
    finally:
        await store.close()


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
    with pytest.raises(NotImplementedError, match="Weaviate"):
        open_store(StoreSettings(backend="weaviate"), DIM)
