"""The `Store` contract, with the same assertions on both backends against real servers:
LanceDB in a temp dir, Weaviate built from its Go module and run on free ports."""

import asyncio
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Collection
from pathlib import Path

import numpy as np
import pytest

from shared.embedding import SentenceTransformerEmbedder
from shared.errors import PermanentError
from shared.settings import EmbeddingSettings, StoreSettings, store_env
from shared.store.base import Store
from shared.store.factory import open_store
from shared.store.records import (
    AdvanceDoc,
    DeleteDoc,
    DocState,
    DocWrite,
    SearchRequest,
    UpsertDoc,
    WriteOutcome,
)
from shared.store.versioning import VersionedStore
from tests.store.builders import DIM, bm25, dense, upsert, vec

REPO = Path(__file__).resolve().parents[2]
APPLIED, STALE, UNSERVED = WriteOutcome.APPLIED, WriteOutcome.STALE, WriteOutcome.UNSERVED


@pytest.fixture
async def store(store_settings: StoreSettings) -> AsyncIterator[VersionedStore]:
    s = open_store(store_settings, DIM)
    assert isinstance(s, VersionedStore)
    yield s
    await s.close()


async def texts_of(store: Store, doc_id: str, word: str = "") -> list[tuple[str, int]]:
    """What a reader is served of one doc: (text, version) of every chunk a search finds."""
    only = {"doc_id": doc_id}
    request = bm25(word, k=100, filters=only) if word else dense(vec(0), k=100, filters=only)
    return sorted((h.chunk.text, h.chunk.version) for h in await store.hybrid_search(request))


async def test_upsert_is_searchable_by_bm25_dense_and_hybrid(store: VersionedStore) -> None:
    doc = upsert("a", 1, ["Kangaroos hop across Australia", "Glucose feeds neurons", "Zebras"])
    assert await store.apply([doc, upsert("b", 1, ["Insulin lowers blood glucose"])]) == [
        APPLIED,
        APPLIED,
    ]
    assert await store.count_chunks() == 4
    assert await store.count_chunks("a") == 3
    assert await store.current_version("a") == DocState("a", 1, False)
    assert await store.current_version("nope") is None

    hits = await store.hybrid_search(bm25("kangaroos"))
    assert [h.chunk.text for h in hits] == ["Kangaroos hop across Australia"]
    assert hits[0].chunk == doc.chunks[0] and hits[0].bm25_score == hits[0].score > 0
    assert {h.chunk.doc_id for h in await store.hybrid_search(bm25("glucose"))} == {"a", "b"}
    assert await store.hybrid_search(bm25("the of and")) == []  # stop words only

    hits = await store.hybrid_search(dense(doc.vectors[1], k=2))
    assert hits[0].chunk.chunk_id == doc.chunks[1].chunk_id
    assert hits[0].score == pytest.approx(1.0, abs=1e-5) and len(hits) == 2

    hits = await store.hybrid_search(SearchRequest(text="zebras", vector=doc.vectors[1], k=10))
    by_text = {h.chunk.text: h for h in hits}
    assert by_text["Zebras"].bm25_score is not None
    assert by_text["Glucose feeds neurons"].dense_score == pytest.approx(1.0, abs=1e-5)
    assert hits == sorted(hits, key=lambda h: -h.score)


async def test_filters_and_bad_requests(store: VersionedStore) -> None:
    await store.apply(
        [
            upsert("a", 1, ["shared words here"], source="wiki", tags=("lang=en", "tier=1")),
            upsert("b", 1, ["shared words"], tags=("lang=de",)),
        ]
    )
    assert {h.chunk.doc_id for h in await store.hybrid_search(bm25("shared"))} == {"a", "b"}
    hits = await store.hybrid_search(bm25("shared", filters={"source": "wiki"}))
    assert [h.chunk.doc_id for h in hits] == ["a"]
    hits = await store.hybrid_search(dense(vec(0), filters={"doc_id": "b"}))
    assert [h.chunk.doc_id for h in hits] == ["b"]
    hits = await store.hybrid_search(bm25("shared", filters={"metadata.lang": "de"}))
    assert [h.chunk.doc_id for h in hits] == ["b"]
    hits = await store.hybrid_search(
        bm25("shared", filters={"metadata.lang": "en", "metadata.tier": "1", "source": "wiki"})
    )
    assert [h.chunk.doc_id for h in hits] == ["a"] and hits[0].chunk.tags == ("lang=en", "tier=1")
    assert await store.hybrid_search(bm25("shared", filters={"metadata.tier": "2"})) == []
    assert await store.hybrid_search(bm25("shared", filters={"doc_id": "it's"})) == []  # quoting
    with pytest.raises(ValueError, match="filter"):
        await store.hybrid_search(bm25("shared", filters={"title": "x"}))
    with pytest.raises(ValueError, match="vector"):
        await store.hybrid_search(SearchRequest(text="shared", vector=None))


async def test_update_replaces_old_chunks(store: VersionedStore) -> None:
    await store.apply([upsert("a", 1, ["apple pie", "banana bread", "cherry tart"])])
    v2 = upsert("a", 2, ["apple pie", "durian soup"])  # first chunk id is shared with v1
    assert await store.apply([v2]) == [APPLIED]
    assert await store.count_chunks("a") == 2
    assert await texts_of(store, "a") == [("apple pie", 2), ("durian soup", 2)]
    assert await store.hybrid_search(bm25("banana")) == []
    hits = await store.hybrid_search(bm25("apple durian"))
    assert {h.chunk.version for h in hits} == {2} and len(hits) == 2


async def test_served_reads_fences_and_the_served_rows_with_vectors(
    store: VersionedStore,
) -> None:
    v1 = upsert("a", 1, ["apple pie", "banana bread"])
    await store.apply([v1, upsert("b", 1, ["cherry"]), DeleteDoc("c", 2)])
    await store.apply([upsert("b", 2, ["cherry tart"])], prune=False)  # b@1's rows stay a while

    served = await store.served(["a", "b", "c", "never"])

    assert served.fences == {
        "a": DocState("a", 1, False),
        "b": DocState("b", 2, False),
        "c": DocState("c", 2, True),
        "never": None,
    }
    assert set(served.docs) == {"a", "b"}  # deleted and unknown docs have no rows
    assert [c.text for c in served.docs["a"].chunks] == ["apple pie", "banana bread"]
    np.testing.assert_allclose(served.docs["a"].vectors, v1.vectors, atol=1e-6)
    assert [(c.text, c.version) for c in served.docs["b"].chunks] == [("cherry tart", 2)]


async def test_a_deferred_prune_changes_what_is_stored_not_what_is_served(
    store: VersionedStore,
) -> None:
    await store.apply([upsert("a", 1, ["apple pie", "banana bread", "cherry tart"])])
    fences = (await store.served(["a", "z"])).fences
    outcomes = await store.apply(
        [upsert("a", 2, ["apple crumble"]), DeleteDoc("z", 1)], fences=fences, prune=False
    )
    assert outcomes == [APPLIED, APPLIED]
    assert await texts_of(store, "a") == [("apple crumble", 2)]
    assert await store.hybrid_search(bm25("banana")) == []
    assert await store.count_chunks("a") == 4  # v1's rows are still stored, never served

    await store.prune()

    assert await store.count_chunks("a") == 1
    assert await texts_of(store, "a") == [("apple crumble", 2)]
    await store.prune()  # nothing left: a no-op


async def test_kept_rows_are_complete_when_stale_rows_rank_first(store: VersionedStore) -> None:
    """A search completes the best-ranked rows while it reads the fences; here all of those
    are of an unpruned old version, so every row it keeps is completed after the fence read."""
    await store.apply([upsert("a", 1, [f"apple apple apple pie {i}" for i in range(6)])])
    await store.apply(
        [upsert("a", 2, ["plain bread"]), upsert("b", 1, ["apple tart"])], prune=False
    )

    hits = await store.hybrid_search(bm25("apple", k=2))

    assert [(h.chunk.doc_id, h.chunk.text, h.chunk.version) for h in hits] == [
        ("b", "apple tart", 1)
    ]
    assert hits[0].chunk.title == "Title of b" and hits[0].chunk.section_path == ("Intro", "Part 0")


async def test_a_doc_that_moves_on_between_the_list_and_fence_reads_is_found(
    store: VersionedStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another writer commits (and prunes) v2 after the search read its lists and before it
    read the fences: the lists hold v1's row, the fence names v2. The search reads again."""
    await store.apply([upsert("a", 1, ["apple pie"]), upsert("b", 1, ["apple tart"])])
    read_fences = store.index.read_fences

    async def commit_first(doc_ids: Collection[str]) -> list[DocState]:
        monkeypatch.setattr(store.index, "read_fences", read_fences)
        await store.apply([upsert("a", 2, ["apple strudel"])])
        return await read_fences(doc_ids)

    monkeypatch.setattr(store.index, "read_fences", commit_first)
    hits = await store.hybrid_search(bm25("apple", k=10))

    assert read_fences == store.index.read_fences  # the write did land inside the search
    assert sorted((h.chunk.doc_id, h.chunk.text, h.chunk.version) for h in hits) == [
        ("a", "apple strudel", 2),
        ("b", "apple tart", 1),
    ]


async def test_fences_read_before_a_newer_write_cannot_bring_an_old_version_back(
    store: VersionedStore,
) -> None:
    await store.apply([upsert("a", 1, ["apple pie"])])
    early = (await store.served(["a"])).fences  # a concurrent writer then commits v3
    await store.apply([upsert("a", 3, ["apple strudel"])])
    assert await store.apply([upsert("a", 2, ["apple tart"])], fences=early) == [APPLIED]
    assert await texts_of(store, "a") == [("apple strudel", 3)]
    assert await store.count_chunks("a") == 1


def advance(doc: UpsertDoc, version: int) -> AdvanceDoc:
    """`doc` unchanged at `version`, served on the rows it was written with."""
    return AdvanceDoc(doc.doc_id, version, doc.version)


async def test_an_advance_serves_the_same_rows_under_the_new_version(
    store: VersionedStore,
) -> None:
    first = upsert("a", 1, ["apple pie", "banana bread"])
    await store.apply([first])

    assert await store.apply([advance(first, 2)]) == [APPLIED]
    assert await store.apply([advance(first, 3)]) == [APPLIED]  # still v1's rows
    await store.prune()

    assert await store.count_chunks("a") == 2  # no rows were copied, none pruned
    assert await store.current_version("a") == DocState("a", 3, False, rows_version=1)
    assert await texts_of(store, "a") == [("apple pie", 3), ("banana bread", 3)]
    served = await store.served(["a"])
    assert served.fences["a"] == DocState("a", 3, False, rows_version=1)
    assert served.docs["a"].version == 1 and {c.version for c in served.docs["a"].chunks} == {1}
    np.testing.assert_array_equal(served.docs["a"].vectors, first.vectors)
    assert await store.apply([advance(first, 3)]) == [APPLIED]  # a replay changes nothing
    assert await store.apply([advance(first, 2)]) == [STALE]
    # An edit replaces the advanced rows; a delete removes them.
    await store.apply([upsert("a", 4, ["apple crumble"])])
    assert await texts_of(store, "a") == [("apple crumble", 4)]
    assert await store.count_chunks("a") == 1
    await store.apply([advance(upsert("a", 4, ["apple crumble"]), 5), DeleteDoc("a", 6)])
    assert await store.count_chunks("a") == 0 and await texts_of(store, "a") == []


async def test_an_advance_whose_rows_were_pruned_meanwhile_is_unserved(
    store: VersionedStore,
) -> None:
    """The advance was planned on fences read at v1; v2 (other rows) committed and pruned v1's
    rows before the advance's marker went in. The advance must not pass for served: its caller
    writes the version's own rows, which then serve it."""
    first = upsert("a", 1, ["apple pie"])
    await store.apply([first])
    early = (await store.served(["a"])).fences
    await store.apply([upsert("a", 2, ["apple tart"])])
    assert await store.count_chunks("a") == 1  # v1's row is gone

    assert await store.apply([advance(first, 3)], fences=early) == [UNSERVED]
    assert await store.apply([first.at(3)]) == [APPLIED]

    assert await texts_of(store, "a") == [("apple pie", 3)]
    await store.prune()
    assert await texts_of(store, "a") == [("apple pie", 3)]
    assert await store.count_chunks("a") == 1
    assert await store.current_version("a") == DocState("a", 3, False)


async def test_an_advance_planned_on_a_moved_fence_is_unserved_and_writes_nothing(
    store: VersionedStore,
) -> None:
    first = upsert("a", 1, ["apple pie"])
    await store.apply([first, upsert("a", 2, ["apple tart"])])
    assert await store.apply([advance(first, 3)]) == [UNSERVED]
    assert await store.apply([advance(first, 4), DeleteDoc("b", 1)]) == [UNSERVED, APPLIED]
    assert await texts_of(store, "a") == [("apple tart", 2)]
    assert await store.current_version("a") == DocState("a", 2, False)
    # At or below the fence, an advance is what any write there is: applied (a no-op) or stale.
    assert await store.apply([advance(first, 2), AdvanceDoc("a", 1, 0)]) == [APPLIED, STALE]
    assert await store.current_version("a") == DocState("a", 2, False)


async def test_delete_keeps_a_tombstone(store: VersionedStore) -> None:
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


async def test_replay_changes_nothing(store: VersionedStore) -> None:
    doc = upsert("a", 1, ["apple pie", "banana bread", "cherry tart"])
    await store.apply([doc])
    served = await texts_of(store, "a")
    for _ in range(2):
        assert await store.apply([doc]) == [APPLIED]
    assert await texts_of(store, "a") == served
    assert await store.count_chunks() == 3


async def test_older_version_is_stale(store: VersionedStore) -> None:
    await store.apply([upsert("a", 5, ["fifth edition"])])
    assert await store.apply([upsert("a", 4, ["fourth edition"])]) == [STALE]
    assert await store.current_version("a") == DocState("a", 5, False)
    assert [h.chunk.text for h in await store.hybrid_search(bm25("edition"))] == ["fifth edition"]
    assert await store.count_chunks() == 1


async def test_batch_of_several_docs(store: VersionedStore) -> None:
    await store.apply([upsert("b", 1, ["bravo one"]), upsert("c", 1, ["charlie one"])])
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


async def test_invalid_writes_are_rejected_before_anything_is_written(
    store: VersionedStore,
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


async def test_crash_between_commits_never_shows_a_subset(store: VersionedStore) -> None:
    """v1 and v2 share a chunk (same chunk_id). A writer that dies after writing v2's rows, or
    after v2's fence, leaves a whole version served; the redelivered write heals the index."""
    v1 = upsert("a", 1, ["shared apple", "old banana"])
    v2 = upsert("a", 2, ["shared apple", "new cherry"])
    assert v1.chunks[0].chunk_id == v2.chunks[0].chunk_id
    await store.apply([v1])
    whole_v1 = [("old banana", 1), ("shared apple", 1)]
    whole_v2 = [("new cherry", 2), ("shared apple", 2)]

    await store.index.insert_rows([v2])  # crash after step 2: rows in, no fence
    assert await store.count_chunks("a") == 4
    assert await texts_of(store, "a") == whole_v1
    assert await texts_of(store, "a", "apple") == [("shared apple", 1)]

    await store.index.insert_fences([DocState("a", 2, False)])  # crash after step 3: no prune
    assert await store.current_version("a") == DocState("a", 2, False)
    assert await texts_of(store, "a") == whole_v2
    assert await texts_of(store, "a", "banana") == []

    assert await store.apply([v2]) == [APPLIED]  # the redelivery
    assert await store.count_chunks("a") == 2
    assert await texts_of(store, "a") == whole_v2


async def test_rows_inserted_again_are_read_once(store: VersionedStore) -> None:
    """A redelivery after a crash between a version's rows and its marker inserts the rows
    again, and so does one racing the first delivery (LanceDB appends them a second time)."""
    doc = upsert("a", 1, ["apple pie", "apple tart"])
    await store.index.insert_rows([doc])  # crash after step 2
    assert await store.apply([doc]) == [APPLIED]  # the redelivery
    await store.index.insert_rows([doc])  # a racing redelivery, past its fence read

    assert await store.count_chunks("a") == 2
    assert await store.count_chunks() == 2
    hybrid = SearchRequest(text="apple", vector=vec(0), mode="hybrid", k=10)
    for request in (bm25("apple", k=10), dense(vec(0), k=10), hybrid):
        hits = await store.hybrid_search(request)
        assert sorted(h.chunk.text for h in hits) == ["apple pie", "apple tart"], request.mode
    served = await store.served(["a"])
    assert [c.text for c in served.docs["a"].chunks] == ["apple pie", "apple tart"]
    assert len(served.docs["a"].vectors) == 2


async def test_readers_never_see_a_subset_under_concurrent_updates(
    store_settings: StoreSettings, store: VersionedStore
) -> None:
    reader = open_store(store_settings, DIM)
    try:
        await readers_see_whole_versions(store, reader)
    finally:
        await reader.close()


async def readers_see_whole_versions(
    writer: Store, reader: Store, *, chunks: int = 3, readers: int = 1, min_served: float = 0.5
) -> None:
    """A writer moves one doc through 20 versions that share chunks; readers (another store
    instance) see, each time, all chunks of exactly one version (or, in the one-read window
    the versioning module describes, none: at least `min_served` of the reads see one)."""

    def texts(v: int) -> list[str]:
        stable = [f"stable part {i}" for i in range(chunks - 2 + v % 2)]
        return [*stable, f"rotating part {v % 3}"]

    versions = {v: upsert("x", v, texts(v)) for v in range(1, 21)}
    await writer.apply([versions[1]])
    seen: list[list[tuple[str, int]]] = []
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set():
            seen.append(await texts_of(reader, "x"))

    tasks = [asyncio.create_task(read()) for _ in range(readers)]
    for v in range(2, 21):
        await writer.apply([versions[v]])
    done.set()
    await asyncio.gather(*tasks)
    whole = {tuple(sorted((c.text, v) for c in d.chunks)) for v, d in versions.items()}
    assert len(seen) > 5
    partial = [s for s in seen if s and tuple(s) not in whole]
    assert partial == []
    assert sum(1 for s in seen if s) >= max(1, int(len(seen) * min_served))


async def test_concurrent_appliers_converge_on_the_newest(store_settings: StoreSettings) -> None:
    rng = random.Random(7)
    vocab = ["alpha", "beta", "gamma", "delta", "omega"]
    versions = {
        v: upsert("x", v, [f"{rng.choice(vocab)} text" for _ in range(rng.randint(1, 4))])
        for v in range(1, 13)
    }
    writes: list[DocWrite] = [*versions.values(), DeleteDoc("x", 6)]
    writes += writes[:4]  # and some redeliveries
    rng.shuffle(writes)
    stores = [open_store(store_settings, DIM) for _ in range(3)]
    try:
        await asyncio.gather(*(stores[i % 3].apply([w]) for i, w in enumerate(writes)))
        newest = versions[12]
        assert await stores[0].current_version("x") == DocState("x", 12, False)
        assert await stores[0].count_chunks() == len(newest.chunks)
        assert await texts_of(stores[1], "x") == sorted((c.text, 12) for c in newest.chunks)
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_upserts_and_advances_converge_and_never_serve_a_mix(
    store_settings: StoreSettings,
) -> None:
    """Upserts at even versions, each followed by an advance of it at the next odd version,
    applied in random order by three stores while another reads: every read sees one whole
    version's texts (or nothing), and all converge on the last advance."""
    rng = random.Random(11)
    vocab = ["alpha", "beta", "gamma", "delta", "omega"]
    upserts = [
        upsert("x", v, [f"{rng.choice(vocab)} text {i}" for i in range(rng.randint(1, 4))])
        for v in range(2, 14, 2)
    ]
    writes: list[DocWrite] = [*upserts, *(advance(u, u.version + 1) for u in upserts)]
    writes += writes[:3]  # and some redeliveries
    rng.shuffle(writes)
    whole = {tuple(sorted(c.text for c in u.chunks)) for u in upserts}
    stores = [open_store(store_settings, DIM) for _ in range(4)]
    seen: list[list[tuple[str, int]]] = []
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set():
            seen.append(await texts_of(stores[3], "x"))

    async def apply(store: VersionedStore, write: DocWrite) -> None:
        """As the embedder does: an unserved advance's version gets rows of its own."""
        if await store.apply([write]) == [UNSERVED]:
            assert isinstance(write, AdvanceDoc)
            await store.apply([upserts[write.rows_version // 2 - 1].at(write.version)])

    try:
        reading = asyncio.create_task(read())
        await asyncio.gather(*(apply(stores[i % 3], w) for i, w in enumerate(writes)))
        done.set()
        await reading
        for s in stores[:3]:
            await s.prune()
        last = upserts[-1]
        assert (await stores[0].current_version("x") or DocState("x", 0, True)).version == 13
        assert await texts_of(stores[1], "x") == sorted((c.text, 13) for c in last.chunks)
        assert await stores[0].count_chunks() == len(last.chunks)
        assert all(tuple(sorted(t for t, _ in s)) in whole for s in seen if s), seen
        assert all(len({v for _, v in s}) == 1 for s in seen if s)
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_redeliveries_are_read_as_one(store_settings: StoreSettings) -> None:
    doc = upsert("x", 1, ["one", "two", "three"])
    stores = [open_store(store_settings, DIM) for _ in range(3)]
    try:
        outcomes = await asyncio.gather(*(stores[i % 3].apply([doc]) for i in range(9)))
        assert outcomes == [[APPLIED]] * 9
        assert await stores[0].count_chunks() == 3
        fences = await stores[0].index.read_fences(["x"])  # type: ignore[attr-defined]
        assert fences == [DocState("x", 1, False)]
    finally:
        for s in stores:
            await s.close()


async def test_a_write_from_another_process_is_visible_at_once(
    store_settings: StoreSettings, store: VersionedStore
) -> None:
    await store.open()  # opened before the write: must not serve a cached snapshot
    assert await store.count_chunks() == 0
    script = textwrap.dedent(
        f"""
        import asyncio, numpy as np
        from shared.settings import StoreSettings
        from shared.store.factory import open_store
        from shared.store.records import ChunkRecord, UpsertDoc
        async def main():
            store = open_store(StoreSettings(), {DIM})
            chunk = ChunkRecord("c1", "p", 1, 0, "", "quokka smiles", (), 0, 13)
            vectors = np.eye(1, {DIM}, dtype=np.float32)
            await store.apply([UpsertDoc("p", 1, [chunk], vectors)])
            await store.close()
        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=REPO, env=_env(store_settings)
    )
    assert await proc.wait() == 0
    assert [h.chunk.chunk_id for h in await store.hybrid_search(bm25("quokka"))] == ["c1"]


async def test_two_writer_processes_converge(
    store_settings: StoreSettings, store: VersionedStore
) -> None:
    """Two writer processes, interleaved versions of one doc plus a stale tail."""
    script = textwrap.dedent(
        f"""
        import asyncio, sys, numpy as np
        from shared.settings import StoreSettings
        from shared.store.factory import open_store
        from shared.store.records import ChunkRecord, UpsertDoc
        def doc(v):
            n = 1 + v % 3
            chunks = [ChunkRecord(f"c{{i}}-{{v % 2}}", "x", v, i, "", f"text {{v}}", (), 0, 1)
                      for i in range(n)]
            return UpsertDoc("x", v, chunks, np.eye(n, {DIM}, dtype=np.float32))
        async def main(versions):
            store = open_store(StoreSettings(), {DIM})
            for v in versions:
                await store.apply([doc(v)])
            await store.close()
        asyncio.run(main([int(v) for v in sys.argv[1:]]))
        """
    )
    await store.open()  # create the tables once, then race the writers
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            *map(str, vs),
            cwd=REPO,
            env=_env(store_settings),
            stderr=subprocess.PIPE,
        )
        for vs in ([1, 3, 5, 7, 9, 11, 2], [2, 4, 6, 8, 10, 12, 1])
    ]
    for proc in procs:
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
    assert await store.current_version("x") == DocState("x", 12, False)
    assert await texts_of(store, "x") == [("text 12", 12)]  # 12 % 3 + 1 = 1 chunk
    assert await store.count_chunks() == 1


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(EmbeddingSettings())


async def test_hybrid_ranks_exact_keyword_and_paraphrase(
    store_settings: StoreSettings, minilm: SentenceTransformerEmbedder
) -> None:
    """With the real model: an exact identifier is found by its keyword, a paraphrase by its
    meaning, and hybrid gets both right."""
    docs = {
        "keyword": "Error code QX-7734 means the flux capacitor tripped its breaker.",
        "paraphrase": "Felines spend most of the day asleep, often sixteen hours or more.",
        "other1": "The stock market closed higher on Tuesday after strong earnings.",
        "other2": "Photosynthesis turns light, water and carbon dioxide into sugar.",
        "other3": "A flux of tourists arrives in the capital every summer.",
    }
    vectors = minilm.encode(list(docs.values()))
    writes: list[DocWrite] = []
    for (doc_id, text), vector in zip(docs.items(), vectors, strict=True):
        base = upsert(doc_id, 1, [text])
        writes.append(UpsertDoc(doc_id, 1, base.chunks, vector[None, :]))
    store = open_store(store_settings, minilm.dim)
    try:
        await store.apply(writes)
        for query, expected in (
            ("what does QX-7734 mean", "keyword"),
            ("how long do cats sleep", "paraphrase"),
        ):
            vector = minilm.encode([query])[0]
            hits = await store.hybrid_search(SearchRequest(text=query, vector=vector, k=3))
            assert hits[0].chunk.doc_id == expected, (query, [h.chunk.doc_id for h in hits])
        cats = await store.hybrid_search(bm25("how long do cats sleep"))
        assert "paraphrase" not in {h.chunk.doc_id for h in cats}  # no shared word: BM25 misses
    finally:
        await store.close()


def _env(settings: StoreSettings) -> dict[str, str]:
    return {**os.environ, **store_env(settings)}
