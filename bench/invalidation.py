"""Answer invalidation and read-your-writes, measured over real stage processes.

    python -m bench.invalidation [--docs 10] [--subscribers 2] [--changes 40] \
        [--background-rate 0] [--ryw 30]

Starts all five stages on an embedded server with a fresh LanceDB index and ingests `--docs`
small docs. Then:

- **invalidation**: `--subscribers` clients per doc ask about it with `subscribe` and
  `regenerate`; `--changes` times a doc (round robin) gets a new version, and each subscriber's
  `answer.invalidated` is timed from the doc event's publication (`publish_to_invalidation_ms`:
  chunking, embedding, the index write, the ack, the watcher, delivery) and from the index's
  ack (`indexed_to_invalidation_ms`: the watcher's own share, `indexed_at` to the event's
  `emitted_at`); the superseding Answer is timed from the publication too. With
  `--background-rate N` other docs are upserted at N/s meanwhile (the watcher reads every ack).
- **memory**: `MEMORY USAGE` of the subscription keys, per subscription: as the pipeline
  recorded them, and for 1,000 recorded the same way with and without `regenerate`.
- **read_your_writes**: `--ryw` times a doc gets a new version and is asked about at once,
  with `after` that version and (as a control) without: latency, how often `possibly_stale`,
  and how often the control cited an older version.

Prints one JSON line.
"""

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from ragstream.allinone import running
from ragstream.ingest import after_of, percentile, publish_and_wait, publish_docs
from shared import answer_watch, doc_state
from shared.answer_watch import Watch, WatchKeys
from shared.client import ask, ask_and_watch
from shared.contracts import Answer, AnswerInvalidated, DocUpsert, Query
from shared.settings import StreamSettings

NAMES = (
    "amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "jasper",
    "kelp", "lagoon", "marble", "nectar", "onyx", "prairie", "quartz", "russet", "sienna", "tundra",
)  # fmt: skip
WAIT_S = 60.0


def summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "n": len(values),
        "p50": round(percentile(values, 50), 1),
        "p99": round(percentile(values, 99), 1),
        "max": round(max(values), 1),
    }


def doc_of(index: int) -> tuple[str, str]:
    name = NAMES[index % len(NAMES)] + (str(index // len(NAMES)) if index >= len(NAMES) else "")
    return f"widgets/{name}", name


def text_of(name: str, version: int) -> str:
    return f"# The {name} widget\n\nThe {name} widget has serial number {version}."


def upsert(index: int, version: int) -> DocUpsert:
    doc_id, name = doc_of(index)
    return DocUpsert(doc_id=doc_id, version=version, title=name, text=text_of(name, version))


def question(index: int) -> str:
    return f"What is the serial number of the {doc_of(index)[1]} widget?"


@dataclass
class Subscriber:
    doc_id: str
    replies: AsyncGenerator[Answer | AnswerInvalidated, None]
    answer: Answer
    events: asyncio.Queue[tuple[float, Answer | AnswerInvalidated]] = field(
        default_factory=asyncio.Queue
    )

    async def listen(self) -> None:
        async for event in self.replies:
            await self.events.put((time.time(), event))

    async def next(self) -> tuple[float, Answer | AnswerInvalidated]:
        async with asyncio.timeout(WAIT_S):
            return await self.events.get()


async def subscribe(redis: Redis, index: int) -> Subscriber:
    replies = ask_and_watch(redis, question(index), regenerate=True, timeout=WAIT_S)
    answer = await anext(replies)
    assert isinstance(answer, Answer), answer
    return Subscriber(doc_of(index)[0], replies, answer)


async def background(redis: Redis, rate: float, stop: asyncio.Event) -> int:
    """Upserts of unrelated docs at `rate` per second until `stop`."""
    sent = 0
    while rate > 0 and not stop.is_set():
        name = f"filler-{sent % 200}"
        event = DocUpsert(
            doc_id=name, version=sent + 1, title=name, text=f"# {name}\n\nFiller {sent}."
        )
        await publish_docs(redis, [event], streams=StreamSettings())
        sent += 1
        await asyncio.sleep(1 / rate)
    return sent


async def invalidation(
    redis: Redis, docs: int, per_doc: int, changes: int, rate: float
) -> dict[str, object]:
    subscribers = [await subscribe(redis, i) for i in range(docs) for _ in range(per_doc)]
    listeners = [asyncio.create_task(s.listen()) for s in subscribers]
    memory = await pipeline_memory(redis, len(subscribers))
    versions = dict.fromkeys(range(docs), 1)
    publish_ms: list[float] = []
    watcher_ms: list[float] = []
    regenerated_ms: list[float] = []
    stop = asyncio.Event()
    filler = asyncio.create_task(background(redis, rate, stop))
    try:
        for change in range(changes):
            index = change % docs
            versions[index] += 1
            (published,) = await publish_docs(
                redis, [upsert(index, versions[index])], streams=StreamSettings()
            )
            sent = time.time()
            doc_id = published.doc_id
            for subscriber in (s for s in subscribers if s.doc_id == doc_id):
                received, event = await subscriber.next()
                assert isinstance(event, AnswerInvalidated), event
                assert event.new_version == versions[index]
                publish_ms.append((received - sent) * 1000)
                state = await doc_state.read(redis, StreamSettings().indexed, doc_id)
                assert state is not None
                watcher_ms.append((event.emitted_at - state.indexed_at).total_seconds() * 1000)
                received, new = await subscriber.next()  # regenerated: it watches on
                assert isinstance(new, Answer) and new.supersedes == subscriber.answer.event_id
                subscriber.answer = new
                regenerated_ms.append((received - sent) * 1000)
    finally:
        stop.set()
        filled = await filler
        for task in listeners:
            task.cancel()
        for subscriber in subscribers:
            with contextlib.suppress(Exception):
                await subscriber.replies.aclose()
    return {
        "subscriptions": len(subscribers),
        "changes": changes,
        "background_upserts": filled,
        "background_rate_per_s": rate,
        "publish_to_invalidation_ms": summary(publish_ms),
        "indexed_to_invalidation_ms": summary(watcher_ms),
        "publish_to_superseding_answer_ms": summary(regenerated_ms),
        "pipeline_memory_bytes_per_subscription": memory,
    }


async def key_memory(redis: Redis, prefix: str) -> int:
    total = 0
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        total += int(await redis.memory_usage(key, samples=0) or 0)
    return total


async def pipeline_memory(redis: Redis, subscriptions: int) -> float:
    prefix = WatchKeys(StreamSettings().indexed).prefix
    return round(await key_memory(redis, prefix) / max(1, subscriptions), 1)


async def synthetic_memory(redis: Redis, n: int = 1000, cited: int = 2) -> dict[str, float]:
    """Per subscription, for `n` recorded as the generator records them, each citing `cited`
    docs of a pool of n/2 (so docs are shared, as popular ones are)."""
    figures: dict[str, float] = {}
    for regenerate in (False, True):
        keys = WatchKeys(f"bench.memory.{int(regenerate)}")
        until = int(time.time() * 1000) + 3_600_000
        async with redis.pipeline(transaction=False) as pipe:
            for i in range(n):
                query = Query(
                    query_id=f"{i:032x}", text=question(i), reply_to=f"rag.answers.c.{i:032x}",
                    subscribe=True, regenerate=regenerate,
                )  # fmt: skip
                watch = Watch(
                    reply_to=query.reply_to or "",
                    answer_id=str(query.event_id),
                    cited={doc_of((i + j) % (n // 2))[0]: 1_700_000_000_000 for j in range(cited)},
                    until_ms=until,
                    query=query.model_dump_json() if regenerate else None,
                )
                answer_watch.watch(
                    pipe, keys, query.query_id, watch, now_ms=until - 3_600_000,
                    max_per_doc=1000, max_total=100_000,
                )  # fmt: skip
            await pipe.execute()
        used = await key_memory(redis, keys.prefix)
        figures["regenerate" if regenerate else "plain"] = round(used / n, 1)
        await redis.delete(*[k async for k in redis.scan_iter(match=f"{keys.prefix}*")])
    return figures


async def read_your_writes(redis: Redis, n: int) -> dict[str, object]:
    after_ms: list[float] = []
    stale = older_without_after = 0
    for i in range(n):
        index, version = i % 5, 1000 + i
        published = await publish_docs(redis, [upsert(index, version)], streams=StreamSettings())
        started = time.perf_counter()
        answer = await ask(redis, question(index), timeout=WAIT_S, after=after_of(published))
        after_ms.append((time.perf_counter() - started) * 1000)
        stale += answer.possibly_stale
        version += 1
        await publish_docs(redis, [upsert(index, version)], streams=StreamSettings())
        control = await ask(redis, question(index), timeout=WAIT_S)  # no `after`
        doc_id = doc_of(index)[0]
        older_without_after += any(
            c.doc_id == doc_id and c.version < version for c in control.citations
        )
        await wait_served(redis, doc_id, version)
    return {
        "asks": n,
        "ask_after_publish_ms": summary(after_ms),
        "possibly_stale": stale,
        "without_after_cited_an_older_version": older_without_after,
    }


async def wait_served(redis: Redis, doc_id: str, version: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while True:
        state = await doc_state.read(redis, StreamSettings().indexed, doc_id)
        if state is not None and state.version >= version:
            return
        assert time.monotonic() < deadline, f"{doc_id}@{version} never indexed"
        await asyncio.sleep(0.05)


async def run(url: str, args: argparse.Namespace) -> dict[str, object]:
    redis = Redis.from_url(url)
    try:
        report = await publish_and_wait(
            redis, [upsert(i, 1) for i in range(args.docs)], streams=StreamSettings(),
            timeout_s=600,
        )  # fmt: skip
        assert report.indexed == args.docs, report.summary()
        await ask(redis, question(0), timeout=120)  # warm-up: models and index opened
        result: dict[str, object] = {"docs": args.docs}
        result["invalidation"] = await invalidation(
            redis, args.docs, args.subscribers, args.changes, args.background_rate
        )
        result["memory_bytes_per_subscription"] = await synthetic_memory(redis)
        result["read_your_writes"] = await read_your_writes(redis, args.ryw)
        return result
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=10)
    parser.add_argument("--subscribers", type=int, default=2, help="per doc")
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--background-rate", type=float, default=0.0, help="upserts/s")
    parser.add_argument("--ryw", type=int, default=30, help="read-your-writes asks")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"RAG_STORE_BACKEND": "lancedb", "RAG_STORE_LANCEDB_PATH": str(Path(tmp) / "index")}
        with running(Path(tmp), extra_env=env) as pipeline:
            result = asyncio.run(run(pipeline.redis_url, args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
