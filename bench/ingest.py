"""Ingest benchmark: bulk docs/s against the raw encode ceiling, and single-update freshness.

    python -m bench.ingest --corpus ../shared/datasets/scifact/corpus.jsonl [--limit N] \
        [--store lancedb|weaviate]

Runs the real chunker and embedder processes on an embedded server with a fresh index (LanceDB,
or a new collection in WEAVIATE_URL's Weaviate or in a local one), then:
1. bulk: publishes every doc at once and waits for all `rag.indexed` acks (docs/s);
2. ceiling: encodes a sample of the same chunk texts in-process, no queue (docs/s);
3. updates: changes `--updates` docs one at a time on the loaded index, each waited for, so
   freshness (emitted → indexed and searchable) is measured without queueing behind a backlog;
4. instrumentation: what the runtime's metrics (and tracing, if on) cost as a share of the
   stages' handling time (bench/instrumentation.py).
Prints one JSON line.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis

from bench.index import bench_store
from bench.instrumentation import overhead
from ragstream.allinone import running
from ragstream.ingest import (
    IngestReport,
    SourceDoc,
    ingest,
    load_documents,
    percentile,
    publish_and_wait,
)
from shared.contracts import DocUpsert
from shared.settings import StreamSettings, store_env

STAGES = ("chunker", "embedder")


def encode_ceiling(docs: list[SourceDoc], sample: int) -> float:
    """docs/s of chunking + encoding in-process (what the pipeline cannot beat)."""
    from services.chunker.chunking import Chunker, load_tokenizer
    from shared.chunk_text import embedding_text
    from shared.embedding import load_embedder
    from shared.settings import EmbeddingSettings

    embedder = load_embedder(EmbeddingSettings())  # the embedder stage's backend (RAG_EMBEDDING_*)
    chunker = Chunker(load_tokenizer())
    subset = docs[:sample]
    started = time.perf_counter()
    texts = [
        embedding_text(d.title, c.section_path, c.text)
        for d in subset
        for c in chunker.chunk(DocUpsert(doc_id=d.doc_id, version=1, title=d.title, text=d.text))
    ]
    embedder.encode(texts)
    return len(subset) / (time.perf_counter() - started)


async def single_updates(
    redis: Redis, docs: list[SourceDoc], n: int, streams: StreamSettings
) -> list[float]:
    freshness: list[float] = []
    for i, doc in enumerate(docs[:n]):
        event = DocUpsert(
            doc_id=doc.doc_id,
            version=2_000_000_000_000 + i,
            title=doc.title,
            text=doc.text + " Updated.",
        )
        report: IngestReport = await publish_and_wait(redis, [event], streams=streams, timeout_s=60)
        freshness.extend(report.freshness_ms)
    return freshness


async def run(args: argparse.Namespace, url: str, docs: list[SourceDoc]) -> dict[str, object]:
    redis = Redis.from_url(url)
    try:
        bulk = await ingest(redis, docs, version=1, timeout_s=args.timeout)
        updates = await single_updates(redis, docs, args.updates, StreamSettings())
    finally:
        await redis.aclose()
    return {"bulk": bulk.summary(), "updates": {
        "n": len(updates),
        "freshness_ms_p50": round(percentile(updates, 50), 1) if updates else None,
        "freshness_ms_p99": round(percentile(updates, 99), 1) if updates else None,
        "freshness_ms_max": round(max(updates), 1) if updates else None,
    }}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="first N docs only")
    parser.add_argument("--updates", type=int, default=50, help="single updates to time")
    parser.add_argument("--ceiling-sample", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--store", choices=("lancedb", "weaviate"), default="lancedb")
    args = parser.parse_args()
    docs = load_documents(args.corpus)[: args.limit]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_store(args.store, Path(tmp)) as store,
        running(Path(tmp), stages=STAGES, extra_env=store_env(store)) as pipeline,
    ):
        result = asyncio.run(run(args, pipeline.redis_url, docs))
        result["instrumentation"] = overhead(pipeline.http_ports)
    ceiling = encode_ceiling(docs, args.ceiling_sample)
    bulk = result["bulk"]
    assert isinstance(bulk, dict)
    result["encode_ceiling_docs_per_s"] = round(ceiling, 1)
    result["ratio_to_ceiling"] = round(float(bulk["docs_per_s"]) / ceiling, 3)
    result["corpus"] = str(args.corpus)
    result["store"] = args.store
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
