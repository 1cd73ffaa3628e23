"""The ingest path end to end: real chunker and embedder processes, a real Redis, a real index."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from bench.ingest import embedded_by_origin
from ragstream.allinone import Pipeline, running
from ragstream.ingest import publish_and_wait
from ragstream.redis_server import RedisServer
from shared import wire
from shared.contracts import DeadLetter, DocDelete, DocUpsert
from shared.settings import StoreSettings, StreamSettings, store_env
from shared.store.base import Store
from shared.store.factory import open_store
from shared.store.records import SearchRequest
from tests.conftest import BACKENDS, fresh_index, stream_env, unique_streams

pytestmark = pytest.mark.integration
STAGES = ("chunker", "embedder")
PAYLOAD_LIMIT = 200_000


@dataclass
class IngestPath:
    pipeline: Pipeline
    streams: StreamSettings
    store_settings: StoreSettings


@pytest.fixture(scope="module", params=BACKENDS)
def ingest_path(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[IngestPath]:
    """Chunker and embedder processes writing to LanceDB, then to a real Weaviate."""
    streams = unique_streams()
    data_dir = tmp_path_factory.mktemp("ingest")
    settings = fresh_index(request.param, data_dir, request)
    env = {
        **stream_env(streams),
        **store_env(settings),
        "RAG_CHUNKER_MAX_PAYLOAD_BYTES": str(PAYLOAD_LIMIT),
    }
    with running(data_dir, redis_server.url, STAGES, env, streams) as pipeline:
        yield IngestPath(pipeline, streams, settings)


@pytest.fixture
async def store(ingest_path: IngestPath) -> AsyncIterator[Store]:
    store = open_store(ingest_path.store_settings, dim=384)
    yield store
    await store.close()


async def apply_events(
    redis: Redis, path: IngestPath, *events: DocUpsert | DocDelete
) -> dict[tuple[str, int], str]:
    report = await publish_and_wait(redis, events, streams=path.streams, timeout_s=60)
    assert len(report.outcomes) == len(events), report.summary()
    return report.outcomes


async def stored_chunks(store: Store, doc_id: str, expected: int) -> int:
    """The doc's stored rows once the embedder's deferred prune (`Store.prune`, on a timer)
    has removed those of replaced versions: `expected` within a few seconds, else the count."""
    for _ in range(100):
        if (n := await store.count_chunks(doc_id)) == expected:
            return n
        await asyncio.sleep(0.05)
    return n


async def bm25_doc_ids(store: Store, text: str) -> list[str]:
    hits = await store.hybrid_search(SearchRequest(text=text, vector=None, mode="bm25", k=10))
    return [h.chunk.doc_id for h in hits]


def upsert(doc_id: str, version: int, text: str, title: str = "") -> DocUpsert:
    return DocUpsert(doc_id=doc_id, version=version, title=title, text=text)


async def test_doc_becomes_searchable(redis: Redis, ingest_path: IngestPath, store: Store) -> None:
    outcomes = await apply_events(
        redis, ingest_path, upsert("zebra", 1, "The quagga was a subspecies of plains zebra.")
    )
    assert outcomes == {("zebra", 1): "indexed"}
    assert "zebra" in await bm25_doc_ids(store, "quagga")


async def test_update_replaces_old_chunks(
    redis: Redis, ingest_path: IngestPath, store: Store
) -> None:
    await apply_events(
        redis, ingest_path, upsert("upd", 1, "Alpha version mentions the xylophone.")
    )
    long_text = "\n\n".join(
        f"Paragraph {i} about the marimba and its resonators." * 20 for i in range(6)
    )
    outcomes = await apply_events(redis, ingest_path, upsert("upd", 2, long_text))
    assert outcomes == {("upd", 2): "indexed"}
    assert "upd" not in await bm25_doc_ids(store, "xylophone")
    assert "upd" in await bm25_doc_ids(store, "marimba")
    state = await store.current_version("upd")
    assert state is not None and state.version == 2
    hits = await store.hybrid_search(
        SearchRequest(text="marimba", vector=None, mode="bm25", k=100, filters={"doc_id": "upd"})
    )
    assert hits and {h.chunk.version for h in hits} == {2}
    assert len(hits) == await stored_chunks(store, "upd", len(hits)) > 1


async def test_delete_removes_doc_and_blocks_older_upserts(
    redis: Redis, ingest_path: IngestPath, store: Store
) -> None:
    await apply_events(redis, ingest_path, upsert("gone", 3, "The ocelot is a wild cat."))
    outcomes = await apply_events(redis, ingest_path, DocDelete(doc_id="gone", version=4))
    assert outcomes == {("gone", 4): "deleted"}
    assert await stored_chunks(store, "gone", 0) == 0
    assert "gone" not in await bm25_doc_ids(store, "ocelot")
    late = await apply_events(redis, ingest_path, upsert("gone", 3, "The ocelot is back."))
    assert late == {("gone", 3): "stale"}
    assert await stored_chunks(store, "gone", 0) == 0


async def test_replayed_event_changes_nothing(
    redis: Redis, ingest_path: IngestPath, store: Store
) -> None:
    event = upsert("replay", 1, "Tardigrades survive extreme cold. They also survive radiation.")
    await apply_events(redis, ingest_path, event)
    before = await store.hybrid_search(
        SearchRequest(
            text="tardigrades", vector=None, mode="bm25", k=50, filters={"doc_id": "replay"}
        )
    )
    await redis.xadd(ingest_path.streams.docs, wire.encode(event))
    await redis.xadd(ingest_path.streams.docs, wire.encode(event))
    await apply_events(redis, ingest_path, upsert("replay-fence", 1, "A later event to wait on."))
    after = await store.hybrid_search(
        SearchRequest(
            text="tardigrades", vector=None, mode="bm25", k=50, filters={"doc_id": "replay"}
        )
    )
    assert sorted(h.chunk.chunk_id for h in after) == sorted(h.chunk.chunk_id for h in before)
    assert await store.count_chunks("replay") == len(before) >= 1


async def test_older_version_is_ignored(
    redis: Redis, ingest_path: IngestPath, store: Store
) -> None:
    await apply_events(
        redis, ingest_path, upsert("old", 5, "Version five talks about the narwhal.")
    )
    outcomes = await apply_events(
        redis, ingest_path, upsert("old", 4, "Version four talks about the walrus.")
    )
    assert outcomes == {("old", 4): "stale"}
    assert "old" in await bm25_doc_ids(store, "narwhal")
    assert "old" not in await bm25_doc_ids(store, "walrus")


async def test_bad_input_is_dead_lettered_and_good_doc_flows(
    redis: Redis, ingest_path: IngestPath, store: Store
) -> None:
    streams = ingest_path.streams
    dlq_start = (await redis.xrevrange(streams.dlq, count=1) or [(b"0-0", {})])[0][0]
    bad: dict[str, dict[bytes, bytes]] = {
        "malformed JSON": {b"event": b'{"type": "upsert", "doc_id": '},
        "missing field": {b"event": b'{"type": "upsert", "doc_id": "m1", "version": 1}'},
        "wrong type": {
            b"event": b'{"type": "upsert", "doc_id": "w1", "version": "seven", "text": "x"}'
        },
        "non-UTF-8": {
            b"event": b'{"type": "upsert", "doc_id": "\xff\xfe", "version": 1, "text": "x"}'
        },
        "empty text": {
            b"event": b'{"type": "upsert", "doc_id": "e1", "version": 1, "text": "   "}'
        },
        "too large": {
            b"event": upsert("big", 1, "word " * PAYLOAD_LIMIT).model_dump_json().encode()
        },
        "no event field": {b"data": b"{}"},
    }
    for fields in bad.values():
        await redis.xadd(streams.docs, fields)
    outcomes = await apply_events(
        redis, ingest_path, upsert("good", 1, "The okapi is related to the giraffe.")
    )
    assert outcomes == {("good", 1): "indexed"}
    assert "good" in await bm25_doc_ids(store, "okapi")

    letters: list[tuple[DeadLetter, bytes]] = []
    for _ in range(50):
        entries = await redis.xrange(streams.dlq, min=f"({dlq_start.decode()}")
        letters = [(DeadLetter.model_validate_json(f[b"event"]), f[b"payload"]) for _, f in entries]
        if len(letters) >= len(bad):
            break
        await asyncio.sleep(0.1)
    reasons = [letter.reason for letter, _ in letters]
    assert len(letters) == len(bad), reasons
    assert all(
        letter.stage == "chunker" and letter.source_stream == streams.docs for letter, _ in letters
    )
    expected = [
        "malformed JSON",
        "text: Field required",
        "version: Input should be a valid integer",
        "not valid UTF-8",
        "document text is empty",
        "over the 200,000-byte limit",
        "no 'event' field",
    ]
    for reason, fragment in zip(reasons, expected, strict=True):
        assert fragment in reason
    assert [payload for _, payload in letters] == [f.get(b"event", b"") for f in bad.values()]


async def embedded_vectors(path: IngestPath) -> dict[str, float]:
    """The embedder's `ragstream_chunk_vectors_total` by origin, read off its /metrics."""
    return embedded_by_origin(path.pipeline.http_ports["embedder"])


async def test_resent_unchanged_doc_moves_its_version_without_embedding(
    redis: Redis, ingest_path: IngestPath, store: Store
) -> None:
    text = "\n\n".join(f"Paragraph {i} describes the okapi's {i} stripes." * 12 for i in range(4))
    await apply_events(redis, ingest_path, upsert("same", 1, text))
    n_chunks = await store.count_chunks("same")
    before = await embedded_vectors(ingest_path)

    outcomes = await apply_events(redis, ingest_path, upsert("same", 2, text))

    assert outcomes == {("same", 2): "unchanged"}
    after = await embedded_vectors(ingest_path)
    assert after["embedded"] == before["embedded"]
    assert after["reused"] - before["reused"] == n_chunks > 1
    state = await store.current_version("same")
    assert state is not None and state.version == 2
    hits = await store.hybrid_search(
        SearchRequest(text="okapi", vector=None, mode="bm25", k=100, filters={"doc_id": "same"})
    )
    assert {h.chunk.version for h in hits} == {2} and len(hits) == n_chunks
    # different metadata is a change (it is in the rows), even with the same text
    retagged = DocUpsert(doc_id="same", version=3, text=text, metadata={"team": "zoo"})
    assert await apply_events(redis, ingest_path, retagged) == {("same", 3): "indexed"}
    assert await embedded_vectors(ingest_path) == {
        "embedded": after["embedded"],  # the chunk texts are the same: their vectors are reused
        "reused": after["reused"] + n_chunks,
    }


async def test_a_one_paragraph_edit_embeds_at_most_two_chunks(
    redis: Redis, ingest_path: IngestPath, store: Store
) -> None:
    paragraphs = [
        " ".join(
            f"Finding {i}.{j} links gene {i * 31 + j} to trait {i % 7}." for j in range(i % 4 + 1)
        )
        for i in range(120)
    ]
    await apply_events(redis, ingest_path, upsert("long", 1, "\n\n".join(paragraphs)))
    assert await store.count_chunks("long") >= 20
    before = await embedded_vectors(ingest_path)

    paragraphs[57] += " A replication in a second cohort confirmed the link."
    outcomes = await apply_events(redis, ingest_path, upsert("long", 2, "\n\n".join(paragraphs)))

    assert outcomes == {("long", 2): "indexed"}
    after = await embedded_vectors(ingest_path)
    assert 1 <= after["embedded"] - before["embedded"] <= 2
    hits = await store.hybrid_search(
        SearchRequest(text="replication cohort", vector=None, mode="bm25", k=5)
    )
    assert hits[0].chunk.doc_id == "long" and hits[0].chunk.version == 2
