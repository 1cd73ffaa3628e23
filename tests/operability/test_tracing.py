"""One doc change is one trace, and one query is one trace, across real Redis hops: each stage
runs in-process with its real handler, spans go to an in-memory exporter."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from services.chunker.chunking import Chunker, load_tokenizer
from services.chunker.events import chunk_batch_async
from services.chunker.settings import ChunkerSettings
from services.embedder.indexing import index_batch
from services.generator.answering import answer_batch
from services.generator.settings import GeneratorSettings
from services.reranker.events import rerank_batch
from services.reranker.settings import RerankerSettings
from services.retriever.retrieval import retrieve_batch
from services.retriever.settings import RetrieverSettings
from shared import tracing, wire
from shared.client import ask
from shared.contracts import CHUNK_EVENT, DOC_EVENT, DocUpsert
from shared.contracts.queries import QUERY, RERANKED, RETRIEVED
from shared.embedding import SentenceTransformerEmbedder
from shared.settings import EmbeddingSettings, RedisSettings, StoreSettings, StreamSettings
from shared.stage import Entry, Stage
from shared.stage_settings import StageSettings
from shared.store.base import Store
from shared.store.factory import open_store

TEXT = "# Mars\n\nPhobos and Deimos are the two moons of Mars. Asaph Hall found them in 1877."


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(EmbeddingSettings())


@pytest.fixture
async def store(tmp_path: Path, embedder: SentenceTransformerEmbedder) -> AsyncIterator[Store]:
    store = open_store(StoreSettings(backend="lancedb", lancedb_path=tmp_path), dim=embedder.dim)
    yield store
    await store.close()


@pytest.fixture
async def stage_of(redis_server: RedisServer, streams: StreamSettings) -> AsyncIterator[Any]:
    made: list[Stage] = []

    def make(name: str) -> Stage:
        redis_settings = RedisSettings.model_validate({"RAG_REDIS_URL": redis_server.url})
        stage = Stage(name, StageSettings(consumer="c1"), redis_settings, streams)
        made.append(stage)
        return stage

    yield make
    for stage in made:
        await stage.redis.aclose()


async def step(stage: Stage) -> None:
    """One read-handle-commit round of `stage`, as its FastStream subscriber would do it."""
    subscription = stage.subscriptions[0]
    await stage.start()
    response = await stage.redis.xreadgroup(
        stage.group, "c1", {subscription.stream: ">"}, count=10, block=5000
    )
    entries = [Entry(i, f) for _, batch in response for i, f in batch]
    assert entries, f"{stage.name}: nothing to read on {subscription.stream}"
    await subscription.process(entries)


def by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in finished}


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_doc_change_is_one_trace(
    spans: InMemorySpanExporter,
    stage_of: Any,
    redis: Redis,
    streams: StreamSettings,
    embedder: SentenceTransformerEmbedder,
    store: Store,
) -> None:
    chunker_settings = ChunkerSettings()
    chunker = stage_of("chunker")
    chunker.subscribe(streams.docs, DOC_EVENT, partial(
        chunk_batch_async,
        chunker=Chunker(load_tokenizer(chunker_settings.tokenizer_path), 128),
        max_chunks=100, out_stream=streams.chunks, redis=redis, indexed_stream=streams.indexed,
    ))  # fmt: skip
    indexer = stage_of("embedder")
    indexer.subscribe(streams.chunks, CHUNK_EVENT, partial(
        index_batch, embedder=embedder, store=store, out_stream=streams.indexed
    ))  # fmt: skip

    with tracing.client_span("ingest"):
        fields = wire.encode(DocUpsert(doc_id="mars", version=1, text=TEXT))
        tracing.inject(fields)
        await redis.xadd(streams.docs, fields)
    await step(chunker)
    await step(indexer)

    got = by_name(spans.get_finished_spans())
    names = ["ingest", f"{streams.docs} wait", "chunker process",
             f"{streams.chunks} wait", "embedder process"]  # fmt: skip
    assert set(names) <= set(got), sorted(got)
    assert len({got[n].context.trace_id for n in names}) == 1
    root = got["ingest"].context.span_id
    assert parent_of(got[f"{streams.docs} wait"]) == root
    assert parent_of(got["chunker process"]) == root
    assert parent_of(got["embedder process"]) == got["chunker process"].context.span_id
    [(_, ack)] = await redis.xrange(streams.indexed)
    assert f"-{got['embedder process'].context.span_id:016x}-".encode() in ack[b"traceparent"]


async def test_a_query_is_one_trace(
    spans: InMemorySpanExporter,
    stage_of: Any,
    redis: Redis,
    streams: StreamSettings,
    embedder: SentenceTransformerEmbedder,
    store: Store,
) -> None:
    retriever = stage_of("retriever")
    retriever.subscribe(streams.queries, QUERY, partial(
        retrieve_batch, embedder=embedder, store=store, settings=RetrieverSettings(),
        streams=streams,
    ))  # fmt: skip
    reranker = stage_of("reranker")
    reranker.subscribe(streams.retrieved, RETRIEVED, partial(
        rerank_batch, reranker=None, settings=RerankerSettings(), out_stream=streams.reranked
    ))  # fmt: skip
    generator = stage_of("generator")
    generator.subscribe(streams.reranked, RERANKED, partial(
        answer_batch, settings=GeneratorSettings(), chat=None, streams=streams,
        publish=generator.publish,
    ))  # fmt: skip

    asking = asyncio.create_task(ask(redis, "Who found the moons of Mars?", streams=streams))
    for stage in (retriever, reranker, generator):
        await step(stage)
    answer = await asyncio.wait_for(asking, 10)
    assert answer.error is None

    got = by_name(spans.get_finished_spans())
    names = ["ask", "retriever process", "reranker process", "generator process",
             f"{streams.retrieved} wait", f"{streams.reranked} wait"]  # fmt: skip
    assert set(names) <= set(got), sorted(got)
    assert len({got[n].context.trace_id for n in names}) == 1
    assert parent_of(got["retriever process"]) == got["ask"].context.span_id
    assert parent_of(got["reranker process"]) == got["retriever process"].context.span_id
    assert parent_of(got["generator process"]) == got["reranker process"].context.span_id


def test_untraced_entries_carry_no_trace_fields() -> None:
    """Tracing off (no OTEL_* set): no tracer exists and nothing is added to entries."""
    assert tracing.tracer() is None
    fields = wire.encode(DocUpsert(doc_id="d", version=1, text="x."))
    tracing.inject(fields)
    assert set(fields) == {wire.EVENT_FIELD}
