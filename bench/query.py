"""Query-path benchmark: per-stage and end-to-end latency over real stage processes.

    python -m bench.query --corpus ../shared/datasets/scifact/corpus.jsonl \
        --queries ../shared/datasets/scifact/queries-train.jsonl [--limit-docs N] [--n 200] \
        [--store lancedb|weaviate]

Starts all five stages on an embedded server with a fresh index (or the existing one at
RAG_STORE_LANCEDB_PATH when --corpus is omitted), ingests the corpus, then asks
`--n` queries one at a time. Prints one JSON line: p50/p95 of retrieve, rerank, generate and
end-to-end milliseconds, and what the runtime's instrumentation costs per stage as a share of
its handling time. Reranker and generator backends come from the usual env settings.
"""

import argparse
import asyncio
import contextlib
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
from ragstream.ingest import ingest, load_documents, percentile
from shared.client import ask
from shared.settings import store_env


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50": round(percentile(values, 50), 1),
        "p95": round(percentile(values, 95), 1),
        "max": round(max(values), 1),
    }


async def run(
    url: str, corpus: Path | None, queries: list[str], limit_docs: int | None
) -> dict[str, object]:
    redis = Redis.from_url(url)
    stages: dict[str, list[float]] = {
        "retrieve": [],
        "rerank": [],
        "generate": [],
        "end_to_end": [],
    }
    errors = abstained = 0
    try:
        docs = load_documents(corpus)[:limit_docs] if corpus is not None else []
        report = await ingest(redis, docs, version=1, timeout_s=3600)
        for text in queries:
            started = time.perf_counter()
            answer = await ask(redis, text, timeout=60)
            stages["end_to_end"].append((time.perf_counter() - started) * 1000)
            timings = answer.timings
            measured = {
                "retrieve": timings.retrieve_ms,
                "rerank": timings.rerank_ms,
                "generate": timings.generate_ms,
            }
            for name, value in measured.items():
                if value is not None:
                    stages[name].append(value)
            errors += answer.error is not None
            abstained += answer.abstained
    finally:
        await redis.aclose()
    return {
        "docs_ingested": report.indexed,
        "queries": len(queries),
        "errors": errors,
        "abstained": abstained,
        **{f"{name}_ms": summary(values) for name, values in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--corpus", type=Path, help="ingested first; omit to query an existing index given by "
        "RAG_STORE_LANCEDB_PATH (e.g. the one `ragstream eval` cached)",
    )  # fmt: skip
    parser.add_argument("--queries", type=Path, required=True, help="JSONL with a text field")
    parser.add_argument("--limit-docs", type=int, default=None)
    parser.add_argument("--n", type=int, default=200, help="queries to ask")
    parser.add_argument("--store", choices=("lancedb", "weaviate"), default="lancedb",
                        help="with --corpus: the fresh index's backend")  # fmt: skip
    args = parser.parse_args()
    with args.queries.open(encoding="utf-8") as lines:
        queries = [json.loads(line)["text"] for line in lines if line.strip()][: args.n]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {}
        if args.corpus is not None:
            env = store_env(stack.enter_context(bench_store(args.store, tmp)))
        pipeline = stack.enter_context(running(tmp, extra_env=env))
        result = asyncio.run(run(pipeline.redis_url, args.corpus, queries, args.limit_docs))
        result["instrumentation"] = overhead(pipeline.http_ports)
    result["store"] = args.store if args.corpus is not None else "existing"
    result["reranker"] = os.environ.get("RAG_RERANKER_BACKEND", "none")
    result["generator"] = os.environ.get("RAG_GENERATOR_BACKEND", "extractive")
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
