"""What entry ownership costs on the commit path: `python -m bench.commit_path`; one JSON line.

Times, against a server of its own (AOF on, `everysec`, as deployed), the commit of batches of
read entries with one small output each, two ways, interleaved round by round so both see the
same machine load:

- `plain`: the commit as it was before ownership checks — `MULTI`, one `XADD` per output (and
  its projection), one `XACK`, `EXEC` (`_PlainStage`, the earlier `Stage._commit_once` less its
  dead-letter branch, as the baseline);
- `owned`: `Stage.commit` — `MULTI`, the `COMMIT` script (an `XPENDING` per entry, the `XADD`s,
  the `XACK`), `EXEC`; and `exclusive`, the same for a subscription with `Exclusive` work (the
  generator's: a done marker per request, a lease released).

And a streamed output (an answer delta): `plain` XADD against `fenced` (the `STREAMED` script).
Reported: the median microseconds per call and per entry.
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.trace import Span
from pydantic import BaseModel, TypeAdapter

from ragstream.redis_server import start_server
from shared import metrics, ownership, tracing, wire
from shared.delivery import Entry, Exclusive, Outcome, Publication
from shared.errors import PermanentError
from shared.settings import RedisSettings, StreamSettings
from shared.stage import Stage
from shared.stage_settings import StageSettings
from shared.subscription import Subscription


class Item(BaseModel):
    """An event of about the size of a small output (a chunk ack, an answer delta)."""

    key: str
    text: str = "x" * 200


async def _ignore(items: Sequence[Item]) -> list[Outcome]:
    return [() for _ in items]


def _streams() -> StreamSettings:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    names = ("docs", "chunks", "indexed", "queries", "retrieved", "reranked", "answers", "dlq")
    return StreamSettings(**{name: f"{prefix}.{name}" for name in names})  # type: ignore[arg-type]


class _PlainStage(Stage):
    """`Stage` with the commit it had before ownership checks (the baseline)."""

    async def _commit_once(
        self,
        subscription: Subscription[Any],
        entries: Sequence[Entry],
        outcomes: dict[bytes, Outcome],
        deliveries: Sequence[int],
        spans: Mapping[bytes, Span],
    ) -> None:
        acked: list[bytes] = []
        async with self.redis.pipeline(transaction=True) as pipe:
            for entry in entries:
                outcome = outcomes.get(entry.id)
                if outcome is None:
                    continue
                acked.append(entry.id)
                assert not isinstance(outcome, PermanentError), "no dead letters in this bench"
                span = spans.get(entry.id)
                for p in outcome:
                    fields = wire.encode(p.event)
                    if span is not None:
                        tracing.inject(fields, span)
                    self._xadd(pipe, p.stream, fields)
                    self._project(pipe, p)
            pipe.xack(subscription.stream, self.group, *acked)
            await pipe.execute()
        self.failures.forget(acked)
        metrics.acked.labels(self.name, subscription.stream).inc(len(acked))


async def _read(stage: Stage, stream: str, n: int) -> list[Entry]:
    for i in range(n):
        await stage.redis.xadd(stream, wire.encode(Item(key=str(i))))
    response = await stage.redis.xreadgroup(
        stage.group, stage.settings.consumer, {stream: ">"}, count=n
    )
    return [Entry(i, f) for _, batch in wire.read_entries(response) for i, f in batch]


async def _publish_us(
    stage: Stage, redis_settings: RedisSettings, exclusive_stream: str, n: int
) -> dict[str, float]:
    """Median microseconds of publishing one streamed output: plain (a stage without
    `Exclusive`), fenced (an output of a key `stage` leases)."""
    out = stage.streams.chunks
    [entry] = await _read(stage, exclusive_stream, 1)
    lease = ownership.lease_for(
        exclusive_stream, stage.group, "bench", entry.id,
        key="delta", request=None, marker_ms=3_600_000,
    )  # fmt: skip
    stage.leases.add(exclusive_stream, entry.id, lease)
    plain = Stage("bench2", stage.settings, redis_settings, stage.streams)
    times: dict[str, list[float]] = {"plain": [], "fenced": []}
    for round_ in range(n + 5):
        for name, publisher in (("plain", plain), ("fenced", stage)):
            started = time.perf_counter()
            await publisher.publish([Publication(out, Item(key="delta"))])
            if round_ >= 5:
                times[name].append(time.perf_counter() - started)
    await plain.redis.aclose()
    return {name: _median_us(t) for name, t in times.items()}


def _median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 1)


async def run(url: str, batch: int, rounds: int) -> dict[str, Any]:
    redis_settings = RedisSettings.model_validate({"RAG_REDIS_URL": url})
    streams = _streams()
    settings = StageSettings(consumer="bench", batch_size=batch, http_port=0)
    stage = Stage("bench", settings, redis_settings, streams)
    exclusive: Exclusive[Item] = Exclusive(
        key=lambda item: item.key, streamed_key=lambda e: e.key if isinstance(e, Item) else None
    )
    stage.subscribe(streams.docs, TypeAdapter(Item), _ignore)
    stage.subscribe(streams.queries, TypeAdapter(Item), _ignore, exclusive=exclusive)
    await stage.start()
    plain_sub, exclusive_sub = stage.subscriptions
    baseline = _PlainStage("bench", settings, redis_settings, streams)  # same group, consumer
    baseline.subscribe(streams.docs, TypeAdapter(Item), _ignore)
    out = streams.chunks
    times: dict[str, list[float]] = {"plain": [], "owned": [], "exclusive": []}

    async def owned(entries: list[Entry]) -> None:
        outcomes: dict[bytes, Outcome] = {
            e.id: [Publication(out, Item(key=e.id.decode()))] for e in entries
        }
        await stage.commit(plain_sub, entries, outcomes)

    def lease(entries: list[Entry]) -> None:
        """Lease the entries' keys as `Stage.deliver` does before handling (not timed)."""
        for e in entries:
            stage.leases.add(
                exclusive_sub.stream,
                e.id,
                ownership.lease_for(
                    exclusive_sub.stream,
                    stage.group,
                    "bench",
                    e.id,
                    key=e.id.decode(),
                    request=None,
                    marker_ms=3_600_000,
                ),
            )

    async def exclusive_commit(entries: list[Entry]) -> None:
        outcomes: dict[bytes, Outcome] = {
            e.id: [Publication(out, Item(key=e.id.decode()))] for e in entries
        }
        await stage.commit(exclusive_sub, entries, outcomes)

    async def plain(entries: list[Entry]) -> None:
        outcomes: dict[bytes, Outcome] = {
            e.id: [Publication(out, Item(key=e.id.decode()))] for e in entries
        }
        await baseline.commit(baseline.subscriptions[0], entries, outcomes)

    ways: dict[str, tuple[str, Callable[[list[Entry]], Awaitable[None]]]] = {
        "plain": (plain_sub.stream, plain),
        "owned": (plain_sub.stream, owned),
        "exclusive": (exclusive_sub.stream, exclusive_commit),
    }
    for round_ in range(rounds + 5):  # the first 5 rounds warm up
        for name, (stream, commit) in ways.items():
            entries = await _read(stage, stream, batch)
            if name == "exclusive":
                lease(entries)
            started = time.perf_counter()
            await commit(entries)
            if round_ >= 5:
                times[name].append(time.perf_counter() - started)
    pending = [
        int((await stage.redis.xpending(s.stream, stage.group))["pending"])
        for s in stage.subscriptions
    ]
    assert pending == [0, 0], pending
    expected = 3 * batch * (rounds + 5)
    assert await stage.redis.xlen(out) == expected, "every way published every output"

    streamed = await _publish_us(stage, redis_settings, exclusive_sub.stream, rounds * batch)
    info = await stage.redis.info("server")
    await baseline.redis.aclose()
    await stage.redis.aclose()
    per_call = {name: _median_us(t) for name, t in times.items()}
    return {
        "server": f"{info.get('server_name', 'redis')} "
        f"{info.get('valkey_version', info['redis_version'])}",
        "batch": batch,
        "rounds": rounds,
        "commit_us": per_call,
        "commit_us_per_entry": {k: round(v / batch, 1) for k, v in per_call.items()},
        "owned_vs_plain_pct": round(100 * (per_call["owned"] / per_call["plain"] - 1), 1),
        "exclusive_vs_plain_pct": round(100 * (per_call["exclusive"] / per_call["plain"] - 1), 1),
        "publish_us": streamed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.commit_path", description=__doc__)
    parser.add_argument("--batch", type=int, action="append", help="entries per commit")
    parser.add_argument("--rounds", type=int, default=300, help="commits timed per way")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ragstream-commit-") as tmp:
        server = start_server(Path(tmp))
        try:
            results = [
                asyncio.run(run(server.url, batch, args.rounds)) for batch in args.batch or [1, 32]
            ]
        finally:
            server.stop()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
