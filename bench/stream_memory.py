"""Redis memory per pending stream entry: doc events (`rag.docs`) and chunk events
(`rag.chunks`) made from real corpus docs, on a real server (the embedded one).

    python -m bench.stream_memory --corpus ../shared/datasets/scifact/corpus.jsonl [--n 2000]

For each kind: XADD the events of `--n` docs to a fresh stream with a consumer group, read
them all with XREADGROUP without acking (so every entry is also in the group's pending list,
as during a backlog the stage has read but not finished), and report per entry: the payload
bytes (median), MEMORY USAGE of the stream key and the growth of INFO `used_memory` (stream +
pending list). Prints one JSON line.
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from ragstream.ingest import load_documents
from ragstream.redis_server import start_server
from shared import wire
from shared.contracts import ChunkedDoc, DocUpsert


def events(corpus: Path, n: int) -> dict[str, list[bytes]]:
    from services.chunker.chunking import Chunker, load_tokenizer
    from services.chunker.events import chunk_event
    from services.chunker.settings import ChunkerSettings

    chunker, settings = Chunker(load_tokenizer()), ChunkerSettings()
    docs, chunks = [], []
    for d in load_documents(corpus)[:n]:
        upsert = DocUpsert(doc_id=d.doc_id, version=1, title=d.title, text=d.text)
        docs.append(upsert.model_dump_json().encode())
        chunked = chunk_event(upsert, chunker, settings.max_chunks_per_doc)
        assert isinstance(chunked, ChunkedDoc)
        chunks.append(chunked.model_dump_json().encode())
    return {"doc_event": docs, "chunk_event": chunks}


async def measure(redis: Redis, key: str, payloads: list[bytes]) -> dict[str, Any]:
    await redis.xgroup_create(key, "g", id="0", mkstream=True)
    before = int((await redis.info("memory"))["used_memory"])
    pipe = redis.pipeline(transaction=False)
    for payload in payloads:
        pipe.xadd(key, {wire.EVENT_FIELD: payload})
    await pipe.execute()
    added = int((await redis.info("memory"))["used_memory"])
    read = wire.read_entries(await redis.xreadgroup("g", "c", {key: ">"}, count=len(payloads)))
    assert len(read[0][1]) == len(payloads)
    pending = int((await redis.info("memory"))["used_memory"])
    usage = int(await redis.memory_usage(key, samples=0) or 0)
    n = len(payloads)
    return {
        "entries": n,
        "payload_bytes_median": int(statistics.median(len(p) for p in payloads)),
        "payload_bytes_mean": round(sum(len(p) for p in payloads) / n),
        "memory_usage_bytes_per_entry": round(usage / n),
        "used_memory_bytes_per_entry": round((added - before) / n),
        "used_memory_bytes_per_pending_entry": round((pending - before) / n),
    }


async def run(url: str, payloads: dict[str, list[bytes]]) -> dict[str, Any]:
    redis = Redis.from_url(url)
    try:
        result: dict[str, Any] = {}
        for kind, items in payloads.items():
            result[kind] = await measure(redis, f"bench.{kind}", items)
            await redis.delete(f"bench.{kind}")
        info = await redis.info("server")
        result["server"] = f"{info.get('server_name', 'redis')} {info['redis_version']}"
        return result
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--n", type=int, default=2000, help="docs (one doc + one chunk event)")
    args = parser.parse_args()
    payloads = events(args.corpus, args.n)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), appendonly=False)
        try:
            result = asyncio.run(run(server.url, payloads))
        finally:
            server.stop()
    result["corpus"] = str(args.corpus)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
