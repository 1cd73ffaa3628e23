"""Ingest benchmark, per embedding backend: bulk docs/s against the raw encode ceiling, the
re-sync of an unchanged corpus, a one-paragraph edit, and single-update freshness.

    python -m bench.ingest --corpus ../shared/datasets/scifact/corpus.jsonl [--limit N] \
        [--store lancedb|weaviate] [--backends torch,onnx-fp32,onnx-int8]

For each backend (`RAG_EMBEDDING_BACKEND` and, for ONNX, `..._ONNX_PRECISION`; the ONNX export
must exist: `ragstream export-onnx --int8`), runs the real chunker and embedder processes on an
embedded server with a fresh index (LanceDB, or a new collection in WEAVIATE_URL's Weaviate or in
a local one), then:
1. bulk: publishes every doc at once and waits for all `rag.indexed` acks (docs/s);
2. resync: publishes every doc again, unchanged, at a new version (as `ragstream ingest` without
   `--sync` does) and waits for the acks: the speed-up over bulk, and how many were `unchanged`;
3. edit: indexes one long doc made of `--edit-paragraphs` corpus abstracts, edits one paragraph,
   and counts the chunk vectors the embedder embedded for the edit (its /metrics);
4. updates: changes `--updates` docs one at a time on the loaded index, each waited for, so
   freshness (emitted → indexed and searchable) is measured without queueing behind a backlog;
5. ceiling: encodes a sample of the same chunk texts in-process, no queue (docs/s);
6. instrumentation: what the runtime's metrics (and tracing, if on) cost as a share of the
   stages' handling time (bench/instrumentation.py).
Prints one JSON line: one object per backend under "backends".
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
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


BACKENDS: dict[str, dict[str, str]] = {
    "torch": {"RAG_EMBEDDING_BACKEND": "torch"},
    "onnx-fp32": {"RAG_EMBEDDING_BACKEND": "onnx", "RAG_EMBEDDING_ONNX_PRECISION": "fp32"},
    "onnx-int8": {"RAG_EMBEDDING_BACKEND": "onnx", "RAG_EMBEDDING_ONNX_PRECISION": "int8"},
}


def encode_ceiling(docs: list[SourceDoc], sample: int, backend: dict[str, str]) -> float:
    """docs/s of chunking + encoding in-process (what the pipeline cannot beat)."""
    from services.chunker.chunking import Chunker, load_tokenizer
    from shared.chunk_text import embedding_text
    from shared.embedding import load_embedder
    from shared.settings import EmbeddingSettings

    embedder = load_embedder(EmbeddingSettings(**_fields(backend)))  # type: ignore[arg-type]
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


def _fields(backend: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix("RAG_EMBEDDING_").lower(): v for k, v in backend.items()}


async def one_paragraph_edit(
    redis: Redis, docs: list[SourceDoc], paragraphs: int, embedder_port: int
) -> dict[str, object]:
    """Index a long doc of `paragraphs` abstracts; edit its middle paragraph; count embeddings."""
    texts = [d.text for d in docs[:paragraphs]]
    doc = DocUpsert(doc_id="bench-long-doc", version=1, title="Collected abstracts",
                    text="\n\n".join(texts))  # fmt: skip
    streams = StreamSettings()
    first = await publish_and_wait(redis, [doc], streams=streams, timeout_s=120)
    before = embedded_by_origin(embedder_port)
    middle = len(texts) // 2
    texts[middle] = texts[middle].replace(". ", ". In a second cohort the effect held. ", 1)
    edited = doc.model_copy(update={"version": 2, "text": "\n\n".join(texts)})
    second = await publish_and_wait(redis, [edited], streams=streams, timeout_s=120)
    after = embedded_by_origin(embedder_port)
    return {
        "paragraphs": len(texts),
        "indexed": first.outcomes.get((doc.doc_id, 1)),
        "chunks": await _chunks(redis, doc.doc_id),
        "chunks_embedded": after["embedded"] - before["embedded"],
        "chunks_reused": after["reused"] - before["reused"],
        "outcome": second.outcomes.get((doc.doc_id, 2)),
    }


async def _chunks(redis: Redis, doc_id: str) -> int | None:
    from shared import doc_state

    state = await doc_state.read(redis, StreamSettings().indexed, doc_id)
    return state.n_chunks if state else None


def embedded_by_origin(port: int) -> dict[str, float]:
    """The embedder's `ragstream_chunk_vectors_total` by origin (embedded, reused)."""
    found = {"embedded": 0.0, "reused": 0.0}
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ragstream_chunk_vectors_total":
                found[sample.labels["origin"]] = sample.value
    return found


async def run(
    args: argparse.Namespace, url: str, docs: list[SourceDoc], embedder_port: int
) -> dict[str, object]:
    redis = Redis.from_url(url)
    try:
        bulk = await ingest(redis, docs, version=1, timeout_s=args.timeout)
        resync = await ingest(redis, docs, version=2, timeout_s=args.timeout)
        edit = await one_paragraph_edit(redis, docs, args.edit_paragraphs, embedder_port)
        updates = await single_updates(redis, docs, args.updates, StreamSettings())
    finally:
        await redis.aclose()
    return {"bulk": bulk.summary(), "resync": {
        **resync.summary(),
        "speedup_over_bulk": round(bulk.seconds / resync.seconds, 1) if resync.seconds else None,
    }, "edit": edit, "updates": {
        "n": len(updates),
        "freshness_ms_p50": round(percentile(updates, 50), 1) if updates else None,
        "freshness_ms_p99": round(percentile(updates, 99), 1) if updates else None,
        "freshness_ms_max": round(max(updates), 1) if updates else None,
    }}  # fmt: skip


def one_backend(
    args: argparse.Namespace, docs: list[SourceDoc], backend: dict[str, str]
) -> dict[str, object]:
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_store(args.store, Path(tmp)) as store,
        running(Path(tmp), stages=STAGES, extra_env={**store_env(store), **backend}) as pipeline,
    ):
        result = asyncio.run(run(args, pipeline.redis_url, docs, pipeline.http_ports["embedder"]))
        result["instrumentation"] = overhead(pipeline.http_ports)
    ceiling = encode_ceiling(docs, args.ceiling_sample, backend)
    bulk = result["bulk"]
    assert isinstance(bulk, dict)
    result["encode_ceiling_docs_per_s"] = round(ceiling, 1)
    result["ratio_to_ceiling"] = round(float(bulk["docs_per_s"]) / ceiling, 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="first N docs only")
    parser.add_argument("--updates", type=int, default=50, help="single updates to time")
    parser.add_argument("--ceiling-sample", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--store", choices=("lancedb", "weaviate"), default="lancedb")
    parser.add_argument(
        "--backends", default="torch,onnx-int8", help=f"comma-separated, of {', '.join(BACKENDS)}"
    )
    parser.add_argument("--edit-paragraphs", type=int, default=40)
    args = parser.parse_args()
    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(names) - set(BACKENDS):
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    docs = load_documents(args.corpus)[: args.limit]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    result = {
        "corpus": str(args.corpus),
        "store": args.store,
        "docs": len(docs),
        "backends": {name: one_backend(args, docs, BACKENDS[name]) for name in names},
    }
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
