"""Weaviate specifics against real servers: API-key auth, what is transient and what is
permanent, a server restart, collections made for something else, native hybrid."""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from ragstream.weaviate_server import WeaviateServer, start_weaviate
from shared.errors import PermanentError, TransientError
from shared.settings import StoreSettings
from shared.store.records import AdvanceDoc, DocState, SearchRequest, UpsertDoc, WriteOutcome
from shared.store.weaviate_store import FENCE_PROPERTIES, WeaviateIndex, WeaviateStore
from tests.store.builders import DIM, bm25, upsert
from tests.store.test_store_contract import readers_see_whole_versions

KEY = "test-key-7f3a"


def settings_for(server: WeaviateServer, **overrides: object) -> StoreSettings:
    return StoreSettings(
        backend="weaviate",
        weaviate_url=server.url,
        weaviate_grpc_port=server.ports.grpc,
        table=f"w{uuid.uuid4().hex[:10]}",
        **overrides,  # type: ignore[arg-type]
    )


@pytest.fixture
async def store(weaviate_server: WeaviateServer) -> AsyncIterator[WeaviateStore]:
    s = WeaviateStore(settings_for(weaviate_server), DIM)
    yield s
    await s.close()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeaviateServer]:
    server = start_weaviate(tmp_path_factory.mktemp("weaviate-auth"), api_key=KEY)
    yield server
    server.stop()


async def test_api_key_auth(secured: WeaviateServer) -> None:
    good = WeaviateStore(settings_for(secured, weaviate_api_key=KEY), DIM)
    try:
        assert await good.apply([upsert("a", 1, ["guarded text"])]) == [WriteOutcome.APPLIED]
        assert [h.chunk.doc_id for h in await good.hybrid_search(bm25("guarded"))] == ["a"]
    finally:
        await good.close()
    for key in (None, "wrong-key"):
        bad = WeaviateStore(settings_for(secured, weaviate_api_key=key, weaviate_retries=0), DIM)
        # The deployment's fault, not the event's: retried (TransientError), never dead-lettered.
        with pytest.raises(TransientError):
            await bad.apply([upsert("b", 1, ["intruder"])])
        await bad.close()


async def test_a_refused_object_is_a_permanent_error_with_the_reason(
    weaviate_server: WeaviateServer, store: WeaviateStore
) -> None:
    wider = WeaviateStore(store.index.settings, DIM * 2)  # same collection, wrong dimension
    await wider.open()  # while the collection is empty, nothing tells the dimension
    await store.apply([upsert("a", 1, ["eight dimensions"])])
    doc = upsert("b", 1, ["sixteen dimensions"])
    doc = UpsertDoc("b", 1, doc.chunks, np.ones((1, DIM * 2), np.float32) / 4)
    try:
        with pytest.raises(PermanentError, match=r"insert chunk rows.*vector dimensions"):
            await wider.apply([doc])
        fits = upsert("c", 1, ["this one fits"])  # a batch where one object of two is refused
        with pytest.raises(PermanentError, match=r"Weaviate refused 1 of 2 chunk rows: .*dimen"):
            await wider.index.insert_rows([fits, doc])
    finally:
        await wider.close()
    assert await store.current_version("b") is None  # no fence without all its rows
    late = WeaviateStore(store.index.settings, DIM * 2)
    with pytest.raises(ValueError, match="dim"):  # now the collection tells: refused on open
        await late.open()
    await late.close()


async def test_server_down_is_transient_and_a_restart_heals(tmp_path: Path) -> None:
    server = start_weaviate(tmp_path / "w")
    store = WeaviateStore(settings_for(server, weaviate_retries=1, weaviate_timeout_s=2), DIM)
    try:
        assert await store.apply([upsert("a", 1, ["before the outage"])]) == [WriteOutcome.APPLIED]
        server.kill()
        with pytest.raises(TransientError, match="Weaviate"):
            await store.apply([upsert("a", 2, ["during the outage"])])
        with pytest.raises(TransientError):
            await store.hybrid_search(bm25("outage"))
        server = server.restart()
        # The same client recovers once its connections do, as a stage's retries would see.
        deadline = time.monotonic() + 60
        while True:
            try:
                outcome = await store.apply([upsert("a", 2, ["after the outage"])])
                break
            except TransientError:
                assert time.monotonic() < deadline, "no recovery within 60 s of the restart"
                await asyncio.sleep(0.5)
        assert outcome == [WriteOutcome.APPLIED]
        hits = await store.hybrid_search(bm25("outage"))
        assert [(h.chunk.text, h.chunk.version) for h in hits] == [("after the outage", 2)]
        assert await store.count_chunks() == 1
    finally:
        await store.close()
        server.stop()


async def test_collections_are_created_once_by_concurrent_openers(
    weaviate_server: WeaviateServer,
) -> None:
    settings = settings_for(weaviate_server)
    stores = [WeaviateStore(settings, DIM) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await stores[0].apply([upsert("a", 1, ["opened four times"])])
        assert await stores[3].count_chunks() == 1
    finally:
        for s in stores:
            await s.close()


async def test_a_fence_collection_from_before_advances_gets_their_property(
    weaviate_server: WeaviateServer,
) -> None:
    store = WeaviateStore(settings_for(weaviate_server), DIM)
    index = store.index
    assert isinstance(index, WeaviateIndex)
    client = index._new_client()
    await client.connect()
    try:
        old = [p for p in FENCE_PROPERTIES if p.name != "rows_version"]
        await index._ensure(client, f"{index.name}Fences", old, vectors=False)
    finally:
        await client.close()
    try:
        first = upsert("a", 1, ["apple pie"])
        await store.apply([first])
        assert await store.apply([AdvanceDoc("a", 2, first.version)]) == [WriteOutcome.APPLIED]
        await store.prune()
        hits = await store.hybrid_search(bm25("apple"))
        assert [(h.chunk.text, h.chunk.version) for h in hits] == [("apple pie", 2)]
        assert await store.current_version("a") == DocState("a", 2, False, rows_version=1)
    finally:
        await store.close()


async def test_native_hybrid_serves_only_fenced_rows(weaviate_server: WeaviateServer) -> None:
    store = WeaviateStore(settings_for(weaviate_server, weaviate_hybrid="native"), DIM)
    try:
        v1 = upsert("a", 1, ["shared apple", "old banana"])
        await store.apply([v1, upsert("b", 1, ["apple orchard"])])
        await store.index.insert_rows([upsert("a", 2, ["shared apple", "new cherry"])])
        hits = await store.hybrid_search(SearchRequest(text="apple", vector=v1.vectors[0], k=10))
        assert {(h.chunk.doc_id, h.chunk.version) for h in hits} == {("a", 1), ("b", 1)}
        assert hits == sorted(hits, key=lambda h: -h.score)
        assert all(h.dense_score is None and h.bm25_score is None for h in hits)
    finally:
        await store.close()


@pytest.mark.parametrize("settle_ms", [150.0, 0.001])
async def test_readers_see_whole_versions_either_way(
    weaviate_server: WeaviateServer, settle_ms: float
) -> None:
    """Weaviate makes a batch visible object by object. With the default settle delay a fast
    read is consistent as is; with a delay too short for any read, every search takes the
    second read, which must be consistent on its own."""
    settings = settings_for(weaviate_server, weaviate_settle_ms=settle_ms)
    writer, reader = WeaviateStore(settings, DIM), WeaviateStore(settings, DIM)
    try:
        # Every read of the forced variant is a double read, which drops the doc whenever its
        # fence moved in between: fewer reads see it, none may see a part of it.
        min_served = 0.5 if settle_ms > 1 else 0.05
        await readers_see_whole_versions(
            writer, reader, chunks=40, readers=3, min_served=min_served
        )
    finally:
        await writer.close()
        await reader.close()
