"""The fault scenarios, each against a running `Cluster`; each returns one result dict.

Every result has: sent (events published), indexed (docs the index holds exactly right),
lost (docs it should hold but does not, or not completely), duplicated (repeated chunk ids,
rows of a non-current version, unexpected rows), dead_lettered, seconds; plus extras.
"""

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from bench.reliability.cluster import Cluster, StageProcess, count_by_process
from bench.reliability.faulty import POISON
from bench.reliability.observe import (
    Expectation,
    Follower,
    IndexCheck,
    Key,
    Settlement,
    check_index,
    settle,
)
from shared import wire
from shared.contracts import DocUpsert
from shared.settings import StoreSettings
from shared.wire import Fields

_VOCABULARY = """
river stone lantern orbit meadow copper signal harbor glacier violin ember quartz falcon thimble
canyon pepper marble tundra beacon willow saffron engine puzzle cedar comet ledger mosaic nectar
quiver raven summit timber velvet walnut yonder zephyr anchor bramble cobalt
"""
WORDS = tuple(_VOCABULARY.split())


def text_of(rng: random.Random, words: int) -> str:
    sentences = []
    while words > 0:
        n = min(words, rng.randint(6, 16))
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + ".")
        words -= n
    paragraphs = [" ".join(sentences[i : i + 5]) for i in range(0, len(sentences), 5)]
    return "\n\n".join(paragraphs)


def make_docs(
    prefix: str, n: int, words: tuple[int, int] = (40, 300), seed: int = 7
) -> list[DocUpsert]:
    rng = random.Random(f"{prefix}{seed}")
    return [
        DocUpsert(
            doc_id=f"{prefix}{i:05d}",
            version=1,
            title=f"Doc {i}",
            text=text_of(rng, rng.randint(*words)),
        )
        for i in range(n)
    ]


async def publish(redis: Redis, stream: str, entries: Sequence[Fields]) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(entries), 500):
        async with redis.pipeline(transaction=False) as pipe:
            for fields in entries[start : start + 500]:
                pipe.xadd(stream, fields)
            ids += [i.decode() for i in await pipe.execute()]
    return ids


@dataclass
class Run:
    """One scenario's bookkeeping: what was sent, what must be indexed, what came back."""

    cluster: Cluster
    prefix: str
    expectation: Expectation
    follower: Follower
    started: float = 0.0
    sent: int = 0

    @classmethod
    async def begin(cls, cluster: Cluster, prefix: str, expectation: Expectation) -> "Run":
        expectation.docs.clear()
        follower = Follower(cluster.streams.indexed, cluster.streams.dlq)
        async with cluster.client() as redis:
            await follower.mark(redis)
        return cls(cluster, prefix, expectation, follower, time.perf_counter())

    async def send(self, docs: Sequence[DocUpsert], *, expect: bool = True) -> list[str]:
        if expect:
            for doc in docs:
                self.expectation.add(doc)
        self.sent += len(docs)
        async with self.cluster.client() as redis:
            return await publish(redis, self.cluster.streams.docs, [wire.encode(d) for d in docs])

    async def finish(
        self, keys: Sequence[Key], *, letters: int = 0, within_s: float = 300.0
    ) -> tuple[dict[str, Any], Settlement]:
        got = await settle(
            self.cluster.client,
            self.follower,
            self.prefix,
            keys,
            letters=letters,
            within_s=within_s,
        )
        seconds = time.perf_counter() - self.started
        await self.cluster.wait_quiescent()
        index = await converged_index(self.cluster.store, self.prefix, self.expectation)
        result = {
            "sent": self.sent,
            **index.as_dict(),
            "dead_lettered": len(got.letters),
            "seconds": round(seconds, 2),
            "redelivered": got.redelivered,
        }
        return result, got


def keys_of(docs: Sequence[DocUpsert]) -> list[Key]:
    return [(d.doc_id, d.version) for d in docs]


# -- 1. kill -9 a stage mid-batch ---------------------------------------------------------------


async def kill_midbatch(
    cluster: Cluster, expectation: Expectation, stage: str, n: int
) -> dict[str, Any]:
    """kill -9 one replica of `stage` while it holds pending entries; restart it at once. The
    sibling (or the restarted process) reclaims what the dead consumer left pending."""
    prefix = f"kill-{stage}-"
    run = await Run.begin(cluster, prefix, expectation)
    victim = cluster.running(stage)[0]
    docs = make_docs(prefix, n)
    await run.send(docs)
    pending = await _wait_pending(cluster, victim)
    victim.process.kill()
    victim.process.wait()
    replica = int(victim.consumer.split("-")[1])
    replacement = cluster.start_stage(stage, replica)
    result, _ = await run.finish(keys_of(docs))
    await cluster.wait_ready()
    result["pending_at_kill"] = pending
    result["dead_consumer_removed"] = await _wait_consumer_gone(cluster, victim)
    result["replacement"] = replacement.consumer
    return result


async def _wait_pending(cluster: Cluster, proc: StageProcess, within_s: float = 60.0) -> int:
    deadline = time.monotonic() + within_s
    async with cluster.client() as redis:
        while time.monotonic() < deadline:
            pending = (await cluster.consumers(redis, proc.stage)).get(proc.consumer, 0)
            if pending:
                return pending
            await asyncio.sleep(0.01)
    return 0


async def _wait_consumer_gone(cluster: Cluster, proc: StageProcess, within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    async with cluster.client() as redis:
        while time.monotonic() < deadline:
            if proc.consumer not in await cluster.consumers(redis, proc.stage):
                return True
            await asyncio.sleep(0.5)
    return False


# -- 2. Redis restart mid-ingest ----------------------------------------------------------------


async def redis_restart(
    cluster: Cluster, expectation: Expectation, n: int, down_s: float = 2.0
) -> dict[str, Any]:
    """kill -9 the server while docs are in flight; restart it on the same port and AOF dir."""
    return await _restart_mid_ingest(
        cluster, expectation, n, "redis-",
        kill=cluster.kill_redis, start=cluster.start_redis, down_s=down_s,
    )  # fmt: skip


async def _restart_mid_ingest(
    cluster: Cluster,
    expectation: Expectation,
    n: int,
    prefix: str,
    *,
    kill: Callable[[], None],
    start: Callable[[], None],
    down_s: float,
) -> dict[str, Any]:
    """Send `n` docs; once a tenth are acked, `kill` a server, wait `down_s`, `start` it."""
    run = await Run.begin(cluster, prefix, expectation)
    docs = make_docs(prefix, n)
    await run.send(docs)
    await _wait_acks(cluster, run.follower, prefix, max(1, n // 10))
    kill()
    killed_at = time.perf_counter()
    await asyncio.sleep(down_s)
    start()
    down = time.perf_counter() - killed_at
    result, _ = await run.finish(keys_of(docs))
    result["down_s"] = round(down, 2)
    result["stages_alive"] = all(
        p.alive for p in cluster.processes if p.consumer in _current(cluster)
    )
    return result


def _current(cluster: Cluster) -> set[str]:
    """The newest process of each stage replica slot."""
    newest: dict[str, StageProcess] = {}
    for proc in cluster.processes:
        newest["-".join(proc.consumer.split("-")[:2])] = proc
    return {p.consumer for p in newest.values()}


async def _wait_acks(cluster: Cluster, follower: Follower, prefix: str, count: int) -> None:
    seen = Settlement()
    probe = Follower(follower.indexed, follower.dlq)
    probe.cursors = dict(follower.cursors)
    deadline = time.monotonic() + 120
    async with cluster.client() as redis:
        while len(seen.acks) < count and time.monotonic() < deadline:
            await probe.poll(redis, prefix, seen)
            await asyncio.sleep(0.05)


# -- 3. store unavailable -----------------------------------------------------------------------


async def store_outage(
    cluster: Cluster, expectation: Expectation, n: int, outage_s: float
) -> dict[str, Any]:
    """Replace the index directory by a file (fails writes even for root) for `outage_s`."""
    prefix = "outage-"
    run = await Run.begin(cluster, prefix, expectation)
    docs = make_docs(prefix, n)
    half = n // 2
    await run.send(docs[:half])
    await _wait_acks(cluster, run.follower, prefix, 1)
    parked = cluster.index_dir.with_name("index.parked")
    os.rename(cluster.index_dir, parked)
    cluster.index_dir.write_text("the index is unavailable\n")
    try:
        await run.send(docs[half:])
        max_deliveries = await _max_deliveries_during(cluster, outage_s)
    finally:
        cluster.index_dir.unlink()
        os.rename(parked, cluster.index_dir)
    result, _ = await run.finish(keys_of(docs))
    result["outage_s"] = outage_s
    result["max_deliveries_during_outage"] = max_deliveries
    return result


async def _max_deliveries_during(cluster: Cluster, seconds: float) -> int:
    """Highest times-delivered among pending chunk events, sampled for `seconds`."""
    highest = 0
    deadline = time.monotonic() + seconds
    async with cluster.client() as redis:
        while time.monotonic() < deadline:
            rows = await redis.xpending_range(cluster.streams.chunks, "embedder", "-", "+", 1000)
            highest = max([highest, *(int(r["times_delivered"]) for r in rows)])
            await asyncio.sleep(0.5)
    return highest


async def weaviate_restart(
    cluster: Cluster, expectation: Expectation, n: int, down_s: float = 3.0
) -> dict[str, Any]:
    """kill -9 Weaviate while docs are being indexed; restart it on the same ports and data
    directory. The embedders retry (transient errors), nothing is lost or dead-lettered."""
    return await _restart_mid_ingest(
        cluster, expectation, n, "weaviate-restart-",
        kill=cluster.kill_weaviate, start=cluster.start_weaviate, down_s=down_s,
    )  # fmt: skip


# -- 4. poison --------------------------------------------------------------------------------


async def poison(
    cluster: Cluster, expectation: Expectation, n: int, poisoned: int = 3
) -> dict[str, Any]:
    """Docs whose handling raises every time, amid good ones in the same batches."""
    prefix = "psn-"
    run = await Run.begin(cluster, prefix, expectation)
    good = make_docs(f"{prefix}good-", n)
    bad = [
        DocUpsert(doc_id=f"{POISON}{i}", version=1, text="This one crashes the chunker.")
        for i in range(poisoned)
    ]
    mixed = list(good)
    for i, doc in enumerate(bad):
        mixed.insert((i + 1) * len(good) // (poisoned + 1), doc)
    for doc in good:
        expectation.add(doc)
    run.sent = len(mixed)
    async with cluster.client() as redis:
        await publish(redis, cluster.streams.docs, [wire.encode(d) for d in mixed])
    poison_run = Follower(run.follower.indexed, run.follower.dlq)
    poison_run.cursors = dict(run.follower.cursors)
    letters = await settle(cluster.client, poison_run, POISON, keys_of(bad), within_s=180)
    result, _ = await run.finish(keys_of(good))
    result["dead_lettered"] = len(letters.letters)
    result["poison_deliveries"] = sorted(letter.deliveries for letter in letters.letters)
    result["poison_reasons"] = sorted({letter.reason for letter in letters.letters})
    return result


# -- 5. shuffled updates of one doc ---------------------------------------------------------------


async def shuffled_updates(cluster: Cluster, expectation: Expectation, n: int) -> dict[str, Any]:
    """`n` events for one doc: distinct versions plus duplicates, shuffled."""
    prefix = "upd-"
    run = await Run.begin(cluster, prefix, expectation)
    rng = random.Random(5)
    distinct = max(2, n * 3 // 4)
    versions = list(range(1, distinct + 1))
    versions += [rng.randint(1, distinct) for _ in range(n - distinct)]
    rng.shuffle(versions)
    docs = [
        DocUpsert(
            doc_id=f"{prefix}doc",
            version=v,
            title="Updated doc",
            text=f"Version {v} of the document.\n\n" + text_of(random.Random(v), 120),
        )
        for v in versions
    ]
    await run.send(docs)
    result, got = await run.finish(sorted(set(keys_of(docs))))
    result["newest_version"] = distinct
    result["outcomes"] = dict(sorted(_count(got.outcomes.values()).items()))
    return result


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


# -- 6. burst, and 8. replicas sharing the work ---------------------------------------------------


async def burst(cluster: Cluster, expectation: Expectation, n: int) -> dict[str, Any]:
    """`n` small docs at once: throughput and each stage's peak memory."""
    prefix = "burst-"
    run = await Run.begin(cluster, prefix, expectation)
    docs = make_docs(prefix, n, words=(20, 80))
    await run.send(docs)
    result, _ = await run.finish(keys_of(docs), within_s=1800)
    result["docs_per_s"] = round(n / result["seconds"], 1) if result["seconds"] else None
    result["peak_rss_mb"] = {
        stage: max((p.peak_rss_mb() or 0.0) for p in cluster.running(stage))
        for stage in ("chunker", "embedder")
    }
    return result


async def replicas(cluster: Cluster, expectation: Expectation, n: int) -> dict[str, Any]:
    """Two replicas per stage in one group: both do some of the work, none of it twice."""
    prefix = "rep-"
    run = await Run.begin(cluster, prefix, expectation)
    docs = make_docs(prefix, n)
    await run.send(docs)
    result, _ = await run.finish(keys_of(docs))
    split = {
        "chunker": count_by_process(cluster.running("chunker"), "chunked", prefix),
        "embedder": count_by_process(cluster.running("embedder"), "indexed", prefix),
    }
    result["work_split"] = split
    result["all_replicas_worked"] = all(
        len(counts) >= 2 and all(counts.values()) for counts in split.values()
    )
    return result


# -- 7. bad inputs --------------------------------------------------------------------------------


async def bad_inputs(cluster: Cluster, expectation: Expectation, n: int) -> dict[str, Any]:
    """Each kind of bad input ends in the DLQ with its reason; good docs around them flow."""
    prefix = "bad-"
    run = await Run.begin(cluster, prefix, expectation)
    many_chunks = "".join(f"# H{i}\n\nw{i}\n\n" for i in range(100_000))
    huge = DocUpsert(doc_id=f"{prefix}huge", version=1, text="word " * (10 * 1024 * 1024))
    docs_entries: dict[str, Fields] = {
        "malformed JSON": {b"event": b'{"type": "upsert", "doc_id": '},
        "Field required": {b"event": b'{"type": "upsert", "doc_id": "bad-m", "version": 1}'},
        "not valid UTF-8": {b"event": b'{"type": "upsert", "doc_id": "\xff", "version": 1}'},
        "byte limit": wire.encode(huge),
        "document text is empty": wire.encode(
            DocUpsert.model_construct(doc_id=f"{prefix}empty", version=1, text=" ", title="")
        ),
        "chunk limit": wire.encode(DocUpsert(doc_id=f"{prefix}many", version=1, text=many_chunks)),
    }
    chunk_entries: dict[str, Fields] = {
        "invalid event": {b"event": b'{"type": "chunked", "doc_id": "bad-c"}'}
    }
    good = make_docs(f"{prefix}good-", n)
    half = len(good) // 2
    await run.send(good[:half])
    streams = cluster.streams
    async with cluster.client() as redis:
        ids = [
            (streams.docs, i) for i in await publish(redis, streams.docs, [*docs_entries.values()])
        ]
        ids += [
            (streams.chunks, i)
            for i in await publish(redis, streams.chunks, [*chunk_entries.values()])
        ]
    await run.send(good[half:])
    run.sent += len(ids)
    # entry ids are only unique per stream: two streams can hand out the same one
    wanted = dict(zip(ids, [*docs_entries, *chunk_entries], strict=True))
    everything = Follower(run.follower.indexed, run.follower.dlq)
    everything.cursors = dict(run.follower.cursors)
    letters = await settle(cluster.client, everything, "", [], letters=len(wanted), within_s=180)
    result, _ = await run.finish(keys_of(good))
    kinds = {
        (x.source_stream, x.entry_id): wanted.get((x.source_stream, x.entry_id), "?")
        for x in letters.letters
    }
    matched = [
        kinds[(x.source_stream, x.entry_id)]
        for x in letters.letters
        if _reason_ok(kinds[(x.source_stream, x.entry_id)], x.reason)
    ]
    result["dead_lettered"] = len(letters.letters)
    result["bad_inputs"] = len(wanted)
    result["dead_lettered_with_reason"] = sorted(matched)
    result["reasons"] = {
        kinds[(x.source_stream, x.entry_id)]: x.reason[:120] for x in letters.letters
    }
    return result


async def converged_index(
    store: StoreSettings, prefix: str, expectation: Expectation, within_s: float = 5.0
) -> IndexCheck:
    """`check_index` once the embedders' deferred prune has removed the rows that newer versions
    replaced (it runs on a 200 ms timer, after the acks): rows left past `within_s` count."""
    deadline = time.monotonic() + within_s
    while True:
        index = check_index(store, prefix, expectation)
        if index.duplicated == 0 or time.monotonic() > deadline:
            return index
        await asyncio.sleep(0.2)


def _reason_ok(kind: str, reason: str) -> bool:
    fragment = {"byte limit": "-byte limit", "chunk limit": "-chunk limit"}.get(kind, kind)
    return fragment in reason


# -- the whole suite ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    docs: int = 300
    burst: int = 10_000
    updates: int = 200
    outage_s: float = 10.0


async def run_all(cluster: Cluster, sizes: Sizes, only: Sequence[str] = ()) -> dict[str, Any]:
    """Every scenario in an order that keeps the burst's memory figures clean."""
    expectation = Expectation()
    outage: tuple[str, Callable[[], Awaitable[dict[str, Any]]]] = (
        ("store_outage", lambda: store_outage(cluster, expectation, sizes.docs, sizes.outage_s))
        if cluster.backend == "lancedb"
        else ("weaviate_restart", lambda: weaviate_restart(cluster, expectation, sizes.docs))
    )
    plan: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]]]] = [
        ("burst", lambda: burst(cluster, expectation, sizes.burst)),
        ("replicas", lambda: replicas(cluster, expectation, sizes.docs)),
        ("shuffled_updates", lambda: shuffled_updates(cluster, expectation, sizes.updates)),
        ("poison", lambda: poison(cluster, expectation, sizes.docs)),
        outage,
        ("kill9_chunker", lambda: kill_midbatch(cluster, expectation, "chunker", sizes.docs)),
        ("kill9_embedder", lambda: kill_midbatch(cluster, expectation, "embedder", sizes.docs)),
        ("redis_restart", lambda: redis_restart(cluster, expectation, sizes.docs)),
        ("bad_inputs", lambda: bad_inputs(cluster, expectation, sizes.docs)),
    ]
    results: dict[str, Any] = {}
    for name, scenario in plan:
        if not only or name in only:
            results[name] = await scenario()
    return results
