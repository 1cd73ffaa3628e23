"""Query-path benchmark: per-stage and end-to-end latency over real stage processes, under
concurrent load.

    python -m bench.query --corpus ../shared/datasets/scifact/corpus.jsonl \
        --queries ../shared/datasets/scifact/queries-train.jsonl [--limit-docs N] [--n 200] \
        [--concurrency 1,8,32] [--timeout 5] [--store lancedb|weaviate]

Starts all five stages on an embedded server with a fresh index (or the existing one at
RAG_STORE_LANCEDB_PATH when --corpus is omitted), ingests the corpus, then, for each
concurrency level N, asks `--n` queries with N clients asking at once (asyncio tasks, each
with its own reply stream; each query's `deadline` is now + `--timeout`, and its client keeps
listening `--late-wait` s longer to see answers that arrive late). Prints one JSON line: per
level the throughput, p50/p95/p99 of retrieve, rerank, generate (the stages' own timings, of
answers without error) and end-to-end milliseconds (every answer), how many answers were errors
(deadline exceeded among them), how many arrived later than deadline + 100 ms, how many never
came; and what the runtime's instrumentation costs per stage as a share of its handling time.
Reranker and generator backends come from the usual env settings.
"""

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from uuid import uuid4

from redis.asyncio import Redis

from bench.index import bench_store
from bench.instrumentation import overhead
from ragstream.allinone import running
from ragstream.ingest import ingest, load_documents, percentile
from shared.client import send_and_wait
from shared.contracts import Answer, Query
from shared.deadlines import deadline_after, seconds_left
from shared.settings import StreamSettings, store_env

LATE_MS = 100.0
"""An answer arriving later than its query's deadline plus this is counted as late."""
STAGES = ("retrieve", "rerank", "generate", "end_to_end")


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50": round(percentile(values, 50), 1),
        "p95": round(percentile(values, 95), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
    }


@dataclass(frozen=True)
class Load:
    levels: list[int]
    """Clients asking at once, per run."""
    timeout_s: float
    """Each query's deadline, after it is sent."""
    late_wait_s: float
    """How long a client waits past the deadline for a late answer."""


@dataclass
class Level:
    """What the clients of one concurrency level saw."""

    concurrency: int
    timings: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    answers: int = 0
    errors: int = 0
    deadline_errors: int = 0
    abstained: int = 0
    rerank_degraded: int = 0
    late: int = 0
    no_answer: int = 0
    seconds: float = 0.0

    def record(self, answer: Answer, elapsed_ms: float, late_ms: float) -> None:
        self.answers += 1
        self.timings["end_to_end"].append(elapsed_ms)
        self.late += late_ms > LATE_MS
        self.abstained += answer.abstained
        self.rerank_degraded += answer.rerank_degraded is not None
        if answer.error is not None:
            self.errors += 1
            self.deadline_errors += answer.error.startswith("deadline exceeded")
            return
        measured = {
            "retrieve": answer.timings.retrieve_ms,
            "rerank": answer.timings.rerank_ms,
            "generate": answer.timings.generate_ms,
        }
        for name, value in measured.items():
            if value is not None:
                self.timings[name].append(value)

    def report(self, asked: int) -> dict[str, object]:
        ok = self.answers - self.errors
        return {
            "concurrency": self.concurrency,
            "queries": asked,
            "seconds": round(self.seconds, 2),
            "answers_per_s": round(self.answers / self.seconds, 2) if self.seconds else None,
            "ok_per_s": round(ok / self.seconds, 2) if self.seconds else None,
            "errors": self.errors,
            "deadline_errors": self.deadline_errors,
            "no_answer": self.no_answer,
            f"late_over_{LATE_MS:g}ms": self.late,
            "abstained": self.abstained,
            "rerank_degraded": self.rerank_degraded,
            **{f"{name}_ms": summary(values) for name, values in self.timings.items()},
        }


async def ask_at(redis: Redis, text: str, reply_to: str, load: Load, level: Level) -> None:
    """One query with a deadline `load.timeout_s` from now; wait `load.late_wait_s` past it for
    late answers (counted as late if after the deadline + LATE_MS)."""
    query = Query(
        query_id=uuid4().hex, text=text, reply_to=reply_to, deadline=deadline_after(load.timeout_s)
    )
    started = time.perf_counter()
    try:
        answer = await send_and_wait(
            redis, query, timeout=load.timeout_s + load.late_wait_s, streams=StreamSettings()
        )
    except TimeoutError:
        level.no_answer += 1
        return
    elapsed_ms = (time.perf_counter() - started) * 1000
    assert query.deadline is not None
    level.record(answer, elapsed_ms, -seconds_left(query.deadline) * 1000)


async def run_level(redis: Redis, queries: list[str], concurrency: int, load: Load) -> Level:
    """`concurrency` clients take the queries one by one until none is left."""
    level = Level(concurrency)
    todo = iter(queries)
    answers = StreamSettings().answers

    async def client(number: int) -> None:
        reply_to = f"{answers}.bench-{concurrency}-{number}"
        for text in todo:
            await ask_at(redis, text, reply_to, load, level)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(concurrency)))
    level.seconds = time.perf_counter() - started
    return level


async def run(
    url: str,
    corpus: Path | None,
    queries: list[str],
    limit_docs: int | None,
    load: Load,
) -> dict[str, object]:
    redis = Redis.from_url(url)
    reports: list[dict[str, object]] = []
    try:
        docs = load_documents(corpus)[:limit_docs] if corpus is not None else []
        report = await ingest(redis, docs, version=1, timeout_s=3600)
        await send_and_wait(  # warm-up: models and index opened, not measured
            redis, Query(query_id=uuid4().hex, text=queries[0]), timeout=120,
            streams=StreamSettings(),
        )  # fmt: skip
        for concurrency in load.levels:
            level = await run_level(redis, queries, concurrency, load)
            reports.append(level.report(len(queries)))
            await asyncio.sleep(1.0)  # let the stages drain what the clients gave up on
    finally:
        await redis.aclose()
    return {
        "docs_ingested": report.indexed,
        "queries": len(queries),
        "timeout_s": load.timeout_s,
        "errors": sum(int(str(r["errors"])) + int(str(r["no_answer"])) for r in reports),
        "levels": reports,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--corpus", type=Path, help="ingested first; omit to query an existing index given by "
        "RAG_STORE_LANCEDB_PATH (e.g. the one `ragstream eval` cached)",
    )  # fmt: skip
    parser.add_argument("--queries", type=Path, required=True, help="JSONL with a text field")
    parser.add_argument("--limit-docs", type=int, default=None)
    parser.add_argument("--n", type=int, default=200, help="queries to ask per level")
    parser.add_argument(
        "--concurrency",
        default="1",
        help="comma-separated numbers of clients asking at once, e.g. 1,8,32",
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="each query's deadline, seconds after it is sent"
    )
    parser.add_argument(
        "--late-wait",
        type=float,
        default=5.0,
        help="how long a client keeps waiting past the deadline, seconds",
    )
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
        levels = [int(n) for n in args.concurrency.split(",") if n.strip()]
        load = Load(levels, args.timeout, args.late_wait)
        result = asyncio.run(run(pipeline.redis_url, args.corpus, queries, args.limit_docs, load))
        result["instrumentation"] = overhead(pipeline.http_ports)
    result["store"] = args.store if args.corpus is not None else "existing"
    result["reranker"] = os.environ.get("RAG_RERANKER_BACKEND", "none")
    result["generator"] = os.environ.get("RAG_GENERATOR_BACKEND", "extractive")
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
