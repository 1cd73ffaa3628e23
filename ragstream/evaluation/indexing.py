"""Build the evaluation index with the stages' own code, and cache it per corpus and settings.

Direct: every doc goes through the chunker's `chunk_event` and, in batches of the embedder's
size, the embedder's `index_batch` into a `LanceDBStore` — the stage logic without the broker.
Via streams: real chunker and embedder processes (`ragstream.allinone.Pipeline`) on Redis, fed
with `ragstream.ingest.publish_and_wait` on stream names of their own. Either way the store is
optimised at the end, as the embedder does periodically, so every row is in the indexes.
"""

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from redis.asyncio import Redis

from ragstream.allinone import Pipeline
from ragstream.evaluation.beir import Dataset
from ragstream.ingest import IngestReport, publish_and_wait
from ragstream.redis_server import start_server
from services.chunker.chunking import Chunker, load_tokenizer
from services.chunker.events import chunk_event
from services.chunker.settings import ChunkerSettings
from services.embedder.indexing import index_batch
from services.embedder.settings import EmbedderSettings
from shared.contracts import ChunkedDoc, DocIndexed, DocUpsert, IndexOutcome
from shared.embedding import Embedder
from shared.errors import PermanentError
from shared.settings import EmbeddingSettings, StreamSettings
from shared.stage import Publication
from shared.store.lancedb_store import LanceDBStore

INDEX_FORMAT = 2
"""Bump when what an index holds changes for the same settings (e.g. what BM25 indexes)."""
VERSION = 1
SOURCE = "eval"
META_FILE = "index.json"
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class IndexInfo:
    key: str
    path: str
    """The LanceDB directory."""
    docs: int
    chunks: int
    seconds: float
    """Wall-clock of the build (of the original build when `cached`)."""
    via_streams: bool
    cached: bool = False


def cache_key(dataset: Dataset, chunker: ChunkerSettings, embedding: EmbeddingSettings) -> str:
    """Corpus content + everything that changes what is indexed."""
    parts = {
        "format": INDEX_FORMAT,
        "corpus": dataset.corpus_hash(),
        "max_tokens": chunker.max_tokens,
        "tokenizer": str(chunker.tokenizer_path or "default"),
        "model": embedding.model or "default",
        "max_seq_length": embedding.max_seq_length,
    }
    if embedding.backend != "torch":
        # Added only off the default, so the torch indexes cached before the key had a
        # backend stay valid. An export is identified by its precision (a re-export of the
        # same model with another exporter version is taken as the same).
        parts["backend"] = f"{embedding.backend}-{embedding.onnx_precision}"
        if embedding.onnx_path is not None:
            parts["onnx_path"] = str(embedding.onnx_path)
        if embedding.onnx_precision == "int8":  # since int8 runs one text at a time
            parts["int8_runs"] = "one text"
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def upserts(dataset: Dataset) -> list[DocUpsert]:
    return [
        DocUpsert(doc_id=d.doc_id, version=VERSION, title=d.title, text=d.text, source=SOURCE)
        for d in dataset.corpus.values()
    ]


async def build_direct(
    events: Sequence[DocUpsert],
    store: LanceDBStore,
    embedder: Embedder,
    chunker: Chunker,
    *,
    batch_size: int,
    max_chunks: int,
    on_progress: Progress | None = None,
) -> int:
    """Index `events` with the chunker's and the embedder's logic; the number of chunks."""
    chunks = 0
    for start in range(0, len(events), batch_size):
        batch: list[ChunkedDoc] = []
        for event in events[start : start + batch_size]:
            chunked = chunk_event(event, chunker, max_chunks)
            assert isinstance(chunked, ChunkedDoc)
            batch.append(chunked)
        outcomes = await index_batch(batch, embedder, store, out_stream=f"{SOURCE}.indexed")
        for doc, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, PermanentError):
                raise RuntimeError(f"{doc.doc_id}: not indexed: {outcome}")
            acks = [p.event for p in outcome if isinstance(p, Publication)]
            if not acks or not isinstance(acks[0], DocIndexed):
                raise RuntimeError(f"{doc.doc_id}: no index ack")
            if acks[0].outcome is not IndexOutcome.INDEXED:
                raise RuntimeError(f"{doc.doc_id}: {acks[0].outcome}")
        chunks += sum(len(doc.chunks) for doc in batch)
        if on_progress is not None:
            on_progress(len(batch))
    await store.optimize()
    return chunks


def _stream_names() -> StreamSettings:
    prefix = f"eval{uuid.uuid4().hex[:8]}"
    names = ("docs", "chunks", "indexed", "queries", "retrieved", "reranked", "answers", "dlq")
    return StreamSettings.model_validate({name: f"{prefix}.{name}" for name in names})


def build_via_streams(
    events: Sequence[DocUpsert],
    index_dir: Path,
    redis_url: str | None,
    *,
    timeout_s: float = 7200.0,
    on_progress: Progress | None = None,
) -> None:
    """Index `events` by real chunker and embedder processes; raises unless all were indexed."""
    work = Path(tempfile.mkdtemp(prefix="ragstream-eval-"))
    server = None
    if redis_url is None:
        server = start_server(work / "redis", appendonly=False)
        redis_url = server.url
    streams = _stream_names()
    env = {f"RAG_STREAM_{k.upper()}": str(v) for k, v in streams.model_dump().items()}
    env["RAG_STORE_LANCEDB_PATH"] = str(index_dir)
    pipeline = Pipeline(redis_url, work)
    stages = ("chunker", "embedder")
    try:
        for stage in stages:
            pipeline.start_stage(stage, env)
        pipeline.wait_ready(stages, timeout=600, streams=streams)
        report = asyncio.run(_publish(redis_url, events, streams, timeout_s, on_progress))
        if report.indexed != len(events):
            raise RuntimeError(
                f"streams indexed {report.indexed}/{len(events)}: {report.summary()}"
            )
    finally:
        pipeline.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


async def _publish(
    url: str,
    events: Sequence[DocUpsert],
    streams: StreamSettings,
    timeout_s: float,
    on_progress: Progress | None,
) -> IngestReport:
    redis = Redis.from_url(url)
    try:
        return await publish_and_wait(
            redis, events, streams=streams, timeout_s=timeout_s, on_progress=on_progress
        )
    finally:
        await redis.aclose()


def read_info(root: Path) -> IndexInfo | None:
    meta = root / META_FILE
    if not meta.is_file():
        return None
    return IndexInfo(**{**json.loads(meta.read_text()), "cached": True})


def write_info(root: Path, info: IndexInfo) -> None:
    tmp = root / f"{META_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(info), indent=1))
    os.replace(tmp, root / META_FILE)


def count_rows_sync(path: Path, dim: int) -> int:
    async def count() -> int:
        store = LanceDBStore(path, dim)
        try:
            return await store.count_chunks()
        finally:
            await store.close()

    return asyncio.run(count())


def ensure_index(
    dataset: Dataset,
    cache_dir: Path,
    embedder: Embedder,
    *,
    via_streams: bool = False,
    redis_url: str | None = None,
    on_progress: Progress | None = None,
    chunker_settings: ChunkerSettings | None = None,
    embedding_settings: EmbeddingSettings | None = None,
) -> IndexInfo:
    """The index of `dataset`: the cached one if complete, else built (and cached if direct).

    A via-streams index is always built afresh (exercising the pipeline is its point), in its
    own directory under `cache_dir/streams`.
    """
    chunker_settings = chunker_settings or ChunkerSettings()
    embedding_settings = embedding_settings or EmbeddingSettings()
    key = cache_key(dataset, chunker_settings, embedding_settings)
    events = upserts(dataset)
    if via_streams:
        root = cache_dir / "streams" / f"{key}-{uuid.uuid4().hex[:8]}"
        root.mkdir(parents=True)
        started = time.perf_counter()
        build_via_streams(events, root / "index", redis_url, on_progress=on_progress)
        seconds = time.perf_counter() - started
        asyncio.run(_optimize(root / "index", embedder.dim))
        chunks = count_rows_sync(root / "index", embedder.dim)
        info = IndexInfo(key, str(root / "index"), len(events), chunks, seconds, True)
        write_info(root, info)
        return info
    root = cache_dir / key
    cached = read_info(root)
    if cached is not None:
        return cached
    shutil.rmtree(root, ignore_errors=True)  # a build that did not finish
    root.mkdir(parents=True)
    chunker = Chunker(load_tokenizer(chunker_settings.tokenizer_path), chunker_settings.max_tokens)
    started = time.perf_counter()
    chunks = asyncio.run(
        _build(
            events,
            root / "index",
            embedder,
            chunker,
            settings=chunker_settings,
            on_progress=on_progress,
        )
    )
    info = IndexInfo(
        key, str(root / "index"), len(events), chunks, time.perf_counter() - started, False
    )
    write_info(root, info)
    return info


async def _build(
    events: Sequence[DocUpsert],
    path: Path,
    embedder: Embedder,
    chunker: Chunker,
    *,
    settings: ChunkerSettings,
    on_progress: Progress | None,
) -> int:
    store = LanceDBStore(path, embedder.dim)
    try:
        return await build_direct(
            events, store, embedder, chunker,
            batch_size=EmbedderSettings().batch_size,
            max_chunks=settings.max_chunks_per_doc,
            on_progress=on_progress,
        )  # fmt: skip
    finally:
        await store.close()


async def _optimize(path: Path, dim: int) -> None:
    store = LanceDBStore(path, dim)
    try:
        await store.optimize()
    finally:
        await store.close()
