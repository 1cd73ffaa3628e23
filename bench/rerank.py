"""Rerank latency of the local cross-encoder, in-process (no streams), on SciFact passages.

    RAG_RERANKER_BACKEND=cross-encoder RAG_RERANKER_MODEL=PATH [RAG_RERANKER_RUNTIME=onnx] \\
    python -m bench.rerank \\
        --corpus ../shared/datasets/scifact/corpus.jsonl \\
        --queries ../shared/datasets/scifact/queries-train.jsonl [--n 50] [--depth 20] \\
        [--chunk-pairs 8,32] [--burst 8]

Each query gets `--depth` passages: abstracts (title + text, as the reranker reads them, cut to
`max_passage_chars` and then to the model's token limit), taken in corpus order after the
query's position. For each chunk size: the p50/p95 of one rerank call alone (no budget), then a
burst of `--burst` calls at once with the configured `budget_ms` (RAG_RERANKER_BUDGET_MS):
how many kept the reranker's order, how many degraded, how many chunks ran (the worker's
counters), and how long a 1-passage call made right after the burst takes (the worker is held
by abandoned work for at most the chunk in progress). Model settings (threads,
max_seq_length, runtime) come from RAG_RERANKER_*.
"""

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from ragstream.ingest import percentile
from services.reranker.cross_encoder import CrossEncoderReranker
from services.reranker.factory import build_reranker
from services.reranker.reranking import rerank
from services.reranker.settings import RerankerSettings
from services.reranker.worker import ScoringWorker
from shared.contracts.queries import Candidate, Query
from shared.logging import configure_logging


def pools(corpus: Path, queries: list[str], depth: int) -> list[list[Candidate]]:
    with corpus.open(encoding="utf-8") as lines:
        docs = [json.loads(line) for line in lines if line.strip()]
    found = []
    for number in range(len(queries)):
        chosen = [docs[(number * depth + i) % len(docs)] for i in range(depth)]
        found.append(
            [
                Candidate(
                    chunk_id=str(d["_id"]),
                    doc_id=str(d["_id"]),
                    version=1,
                    title=d.get("title", ""),
                    text=d.get("text", ""),
                    char_start=0,
                    char_end=len(d.get("text", "")),
                    fused_score=1.0 - i / depth,
                )
                for i, d in enumerate(chosen)
            ]
        )
    return found


def ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1)}


async def measure(
    reranker: CrossEncoderReranker,
    settings: RerankerSettings,
    queries: list[str],
    candidates: list[list[Candidate]],
    burst: int,
) -> dict[str, Any]:
    depth = len(candidates[0])
    for text, pool in list(zip(queries, candidates, strict=True))[:3]:  # warm-up
        await rerank(Query(query_id="w", text=text), pool, reranker, 5, None, depth=depth)
    alone: list[float] = []
    for text, pool in zip(queries, candidates, strict=True):
        started = time.perf_counter()
        outcome = await rerank(Query(query_id="q", text=text), pool, reranker, 5, None, depth=depth)
        alone.append((time.perf_counter() - started) * 1000)
        assert outcome.degraded is None, outcome.degraded
    before = reranker.worker.stats.chunks_run
    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *(
            rerank(
                Query(query_id=f"b{i}", text=queries[i % len(queries)]),
                candidates[i % len(candidates)],
                reranker,
                5,
                settings.budget_ms,
                depth=depth,
            )
            for i in range(burst)
        )
    )
    burst_s = time.perf_counter() - started
    started = time.perf_counter()  # a 1-passage call right after: how long abandoned work holds it
    await rerank(Query(query_id="f", text=queries[0]), candidates[0][:1], reranker, 1, None)
    follow_up_ms = (time.perf_counter() - started) * 1000
    stats = reranker.worker.stats
    chunks_per_call = -(-depth // reranker.worker.chunk_size)
    done = sum(o.degraded is None for o in outcomes)
    return {
        "chunk_pairs": reranker.worker.chunk_size,
        "alone_ms": ms(alone),
        "burst": {
            "calls": burst,
            "budget_ms": settings.budget_ms,
            "reranked": done,
            "degraded": burst - done,
            "rerank_ms": ms([o.rerank_ms for o in outcomes]),
            "seconds": round(burst_s, 2),
            "chunks_run": stats.chunks_run - before,
            "chunks_of_finished_calls": done * chunks_per_call,
            "follow_up_ms": round(follow_up_ms, 1),
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = RerankerSettings()
    with args.queries.open(encoding="utf-8") as lines:
        queries = [json.loads(line)["text"] for line in lines if line.strip()][: args.n]
    candidates = pools(args.corpus, queries, args.depth)
    reranker = build_reranker(settings)  # torch or ONNX Runtime, per RAG_RERANKER_RUNTIME
    if not isinstance(reranker, CrossEncoderReranker):
        raise SystemExit("set RAG_RERANKER_BACKEND=cross-encoder")
    results = []
    try:
        for size in args.chunk_pairs:
            reranker.worker.close()
            reranker.worker = ScoringWorker(reranker.predict, chunk_size=size)
            results.append(await measure(reranker, settings, queries, candidates, args.burst))
    finally:
        await reranker.aclose()
    return {
        "model": settings.model,
        "depth": args.depth,
        "queries": len(queries),
        "reranker": reranker.name,
        "max_seq_length": settings.max_seq_length,
        "threads": settings.threads,
        "cpus": os.cpu_count(),
        "runs": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True)
    parser.add_argument("--n", type=int, default=50, help="queries reranked one at a time")
    parser.add_argument("--depth", type=int, default=20, help="passages per query")
    parser.add_argument(
        "--chunk-pairs",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[8],
        help="worker chunk sizes to compare, e.g. 4,8,32",
    )
    parser.add_argument("--burst", type=int, default=8, help="calls at once, with the budget")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    configure_logging("ERROR")  # degraded calls are counted, not logged (stdout is the result)
    result = asyncio.run(run(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
