"""Reindex + switch under load: `python -m bench.reindex --corpus …/scifact/corpus.jsonl`.

Starts the chunker, embedder and retriever processes on an embedded server with a fresh index,
ingests the corpus, then keeps two loads running — queries (each doc's title, asking for its
doc: the reply must arrive and hold it) and live updates of random docs — while `reindex`
builds a new generation with `--model` and `switch` serves it. Prints one JSON line: queries
answered, failed (no reply) and missed (the doc not among the candidates) per phase (before,
building, after the switch), the reindex time, and whether the new generation serves every
doc at its acknowledged version.
"""

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from redis.asyncio import Redis

from bench.index import bench_store
from ragstream import reindex
from ragstream.allinone import running
from ragstream.ingest import load_documents, publish_and_wait
from shared import doc_state, generations, wire
from shared.contracts import DocUpsert, Query, Retrieved
from shared.embedding import default_model_path
from shared.settings import EmbeddingSettings, StoreSettings, StreamSettings, store_env
from shared.store.factory import open_store

STAGES = ("chunker", "embedder", "retriever")


class Probes:
    """Asks the retriever `(text, doc_id)` probes one after another; a reply must arrive and
    hold the doc among its candidates (a generation missing docs would not). Counts per
    `phase`, which the driver moves on."""

    def __init__(self, redis: Redis, streams: StreamSettings, probes: Sequence[tuple[str, str]]):
        self.redis, self.streams, self.probes = redis, streams, probes
        self.phase = "before"
        self.answered: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.missed: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = asyncio.Event()  # a cancel inside redis-py's blocking read can be swallowed
        self._replies: dict[str, asyncio.Future[Retrieved]] = {}
        self._cursor: bytes | str = "$"

    async def start(self) -> list[asyncio.Task[None]]:
        """Read replies from the stream's current end (taken before the first query: a `$`
        cursor would miss replies published before the reader's first XREAD), and ask."""
        self._cursor = await wire.last_entry_id(self.redis, self.streams.retrieved)
        return [asyncio.create_task(self.read_replies()), asyncio.create_task(self.ask_forever())]

    async def read_replies(self) -> None:
        last = self._cursor
        while not self.stop.is_set():
            found = await self.redis.xread({self.streams.retrieved: last}, block=200, count=100)
            for _, entries in wire.read_entries(found):
                for entry_id, fields in entries:
                    last = entry_id
                    event = Retrieved.model_validate_json(wire.payload_of(fields))
                    waiter = self._replies.pop(event.query.query_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(event)

    async def ask_forever(self, pause_s: float = 0.02, top_k: int = 20) -> None:
        while not self.stop.is_set():
            text, doc_id = random.choice(self.probes)
            phase = self.phase
            query = Query(query_id=uuid.uuid4().hex, text=text, top_k_retrieve=top_k)
            waiter = asyncio.get_running_loop().create_future()
            self._replies[query.query_id] = waiter
            await self.redis.xadd(self.streams.queries, wire.encode(query))
            try:
                reply = await asyncio.wait_for(waiter, 30)
            except TimeoutError:
                self.failed[phase] += 1
                self.failures.append(f"{phase}: no reply to {text!r}")
                continue
            self.answered[phase] += 1
            if doc_id not in {c.doc_id for c in reply.candidates}:
                self.missed[phase] += 1
                found = [(c.doc_id, c.version, round(c.fused_score, 3)) for c in reply.candidates]
                self.failures.append(f"{phase}: {text!r} → {found[:5]}")
            await asyncio.sleep(pause_s)

    def summary(self) -> dict[str, dict[str, int]]:
        return {
            phase: {
                "answered": self.answered[phase],
                "failed": self.failed[phase],
                "missed": self.missed[phase],
            }
            for phase in ("before", "building", "after")
        }


async def update_forever(
    redis: Redis,
    streams: StreamSettings,
    docs: Sequence[DocUpsert],
    stop: asyncio.Event,
    pause_s: float = 0.05,
) -> int:
    """Change random docs one at a time (a new version with a sentence more), each waited for."""
    versions = {d.doc_id: d.version for d in docs}
    done = 0
    while not stop.is_set():
        base = random.choice(docs)
        versions[base.doc_id] += 1
        text = f"{base.text} Revision {versions[base.doc_id]} of this record."
        changed = base.model_copy(update={"version": versions[base.doc_id], "text": text})
        await publish_and_wait(redis, [changed], streams=streams, timeout_s=60)
        done += 1
        await asyncio.sleep(pause_s)
    return done


async def serves_every_doc(redis: Redis, streams: StreamSettings, store: StoreSettings) -> bool:
    """Whether `store`'s table serves each doc at its acknowledged version."""
    states = {
        s.doc_id: (s.version, s.deleted) for s in await doc_state.scan(redis, streams.indexed)
    }
    index = open_store(store, dim=384)
    try:
        fences = await index.fences(list(states))
    finally:
        await index.close()
    return {d: (f.version, f.deleted) for d, f in fences.items()} == states


async def run(args: argparse.Namespace, url: str, store: StoreSettings) -> dict[str, object]:
    streams = StreamSettings()
    docs = [
        DocUpsert(doc_id=d.doc_id, version=1, title=d.title, text=d.text)
        for d in load_documents(args.corpus)[: args.limit]
    ]
    probes = [(d.title, d.doc_id) for d in docs if len(d.title.split()) >= 4]
    redis = Redis.from_url(url)
    try:
        bulk = await publish_and_wait(redis, docs, streams=streams, timeout_s=args.timeout)
        load = Probes(redis, streams, probes)
        tasks = await load.start()
        updating = asyncio.create_task(update_forever(redis, streams, docs, load.stop))
        await asyncio.sleep(args.settle)
        load.phase = "building"
        started = time.monotonic()
        registry = await reindex.reindex(
            redis, model=args.model, backend=args.backend, streams=streams, store_settings=store,
            embedding=EmbeddingSettings(), timeout_s=args.timeout,
        )  # fmt: skip
        built_s = time.monotonic() - started
        assert registry.building is not None
        table = registry.building.table
        await reindex.switch(redis, streams=streams, table=store.table)
        load.phase = "after"
        await asyncio.sleep(args.settle)
        load.stop.set()
        updates = await updating
        await asyncio.wait(tasks, timeout=20)
        for task in tasks:
            task.cancel()
        registry = await generations.read(redis, streams.indexed, store.table)
        complete = await serves_every_doc(redis, streams, store.model_copy(update={"table": table}))
    finally:
        await redis.aclose()
    return {
        "docs": len(docs),
        "ingest_s": round(bulk.seconds, 1),
        "reindex_s": round(built_s, 1),
        "reindex_docs_per_s": round(len(docs) / built_s, 1),
        "serving": registry.serving.table,
        "new_generation_serves_every_doc": complete,
        "live_updates": updates,
        "queries": load.summary(),
        "failures": load.failures[:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="first N docs only")
    parser.add_argument("--store", choices=("lancedb", "weaviate"), default="lancedb")
    parser.add_argument("--model", default=None, help="the new generation's model (default: "
                        "the packaged MiniLM again, through torch)")  # fmt: skip
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before and after")
    parser.add_argument("--timeout", type=float, default=3600.0)
    args = parser.parse_args()
    args.model = args.model or default_model_path()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    env = {"RAG_EMBEDDER_GENERATION_GRACE_S": "2", "RAG_EMBEDDER_GENERATION_CHECK_S": "0.5"}
    with (
        tempfile.TemporaryDirectory() as tmp,
        bench_store(args.store, Path(tmp)) as store,
        running(Path(tmp), stages=STAGES, extra_env={**store_env(store), **env}) as pipeline,
    ):
        result = asyncio.run(run(args, pipeline.redis_url, store))
    result |= {"corpus": str(args.corpus), "store": args.store, "model": args.model}
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
