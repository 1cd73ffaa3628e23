"""The consume → handle → publish-and-ack loop every stage runs, on top of FastStream.

Delivery semantics (see docs/reliability.md):
- Consumer groups are created at id `0` before the subscribers start, so entries published before
  a stage first ran are not skipped.
- An entry is acked in the same MULTI/EXEC transaction that publishes its outputs (or its dead
  letter): a crash leaves both undone or both done, so stage-to-stage hand-off is exactly-once.
- Bad input (`PermanentError`) is dead-lettered with its reason and acked; the rest of the batch
  flows. Transient errors are retried in-process with backoff (without burning the delivery
  budget); after `transient_retry_s` the entries stay pending for reclaim.
- A reclaim loop takes over entries other consumers left pending longer than `reclaim_idle_ms`
  (XAUTOCLAIM); an entry delivered more than `max_deliveries` times is dead-lettered.
"""

import asyncio
import logging
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import structlog
from faststream import AckPolicy, FastStream
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisBatchStreamMessage
from faststream.redis.message import FAKE_CONSUMER, BatchStreamMessage
from faststream.redis.message import RedisBatchStreamMessage as BatchMessage
from pydantic import BaseModel, TypeAdapter
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import wire
from shared.contracts import DeadLetter
from shared.logging import configure_logging
from shared.errors import PermanentError, TransientError
from shared.settings import RedisSettings, StreamSettings
from shared.stage_settings import StageSettings

T = TypeVar("T")
log = structlog.get_logger("ragstream.stage")
FASTSTREAM_LOGGER = logging.getLogger("ragstream.faststream")
"""FastStream's own lines go through the root handler: JSON on stderr like ours."""


@dataclass(frozen=True, slots=True)
class Entry:
    id: bytes
    fields: dict[bytes, bytes]


@dataclass(frozen=True, slots=True)
class Publication:
    stream: str
    event: BaseModel


Outcome = Sequence[Publication] | PermanentError
"""What handling one entry produced: events to publish, or the reason to dead-letter it."""

BatchHandler = Callable[[Sequence[T]], Awaitable[Sequence[Outcome]]]
RejectHook = Callable[[Entry, str], Sequence[Publication]]
"""Extra events to publish beside a dead letter (e.g. an error answer to the asking client)."""


def redis_client(settings: RedisSettings) -> "Redis":
    password = settings.password.get_secret_value() if settings.password else None
    return Redis.from_url(settings.url, password=password)


async def ensure_group(redis: "Redis", stream: str, group: str) -> None:
    """Create `group` on `stream` at id 0 (idempotent), so no earlier entry is skipped."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def _raw_parser(message: BatchStreamMessage) -> BatchMessage:
    """Hand entries over untouched: decoding (and rejecting) payloads is the stage's job."""
    return BatchMessage(raw_message=message, body=b"", consumer=FAKE_CONSUMER, group=None)


async def _no_decode(message: Any) -> None:
    return None


class Subscription(Generic[T]):
    """One input stream of a stage: how to decode its entries and what to do with them."""

    def __init__(
        self,
        stage: "Stage",
        stream: str,
        adapter: TypeAdapter[T],
        handle: BatchHandler[T],
        on_reject: RejectHook | None = None,
    ) -> None:
        self.stage = stage
        self.stream = stream
        self.adapter = adapter
        self.handle = handle
        self.on_reject = on_reject

    async def process(self, entries: Sequence[Entry], deliveries: Sequence[int] = ()) -> None:
        stage, settings = self.stage, self.stage.settings
        outcomes: dict[bytes, Outcome] = {}
        good: list[tuple[Entry, T]] = []
        for index, entry in enumerate(entries):
            count = deliveries[index] if deliveries else 1
            if count > settings.max_deliveries:
                outcomes[entry.id] = PermanentError(
                    f"gave up after {count - 1} deliveries (max_deliveries="
                    f"{settings.max_deliveries})"
                )
                continue
            try:
                good.append((entry, wire.decode(self.adapter, entry.fields, max_bytes=settings.max_payload_bytes)))
            except PermanentError as exc:
                outcomes[entry.id] = exc
        if good:
            handled = await self._handle_with_retries([event for _, event in good])
            if handled is None:
                good_ids = {entry.id for entry, _ in good}
                rest = [e for e in entries if e.id not in good_ids]
                await stage.commit(self, rest, outcomes)
                return
            for (entry, _), outcome in zip(good, handled, strict=True):
                outcomes[entry.id] = outcome
        await stage.commit(self, entries, outcomes, deliveries)

    async def _handle_with_retries(self, events: list[T]) -> Sequence[Outcome] | None:
        deadline = time.monotonic() + self.stage.settings.transient_retry_s
        delay = 0.1
        while True:
            try:
                return await self.handle(events)
            except TransientError as exc:
                if time.monotonic() + delay > deadline:
                    log.error("transient error, leaving entries pending", reason=str(exc))
                    return None
                log.warning("transient error, retrying", reason=str(exc), delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class Stage:
    """A stage's broker, its own Redis client for publish-and-ack, and its subscriptions."""

    def __init__(
        self,
        name: str,
        settings: StageSettings,
        redis_settings: RedisSettings | None = None,
        streams: StreamSettings | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.group = settings.group or name
        self.streams = streams or StreamSettings()
        redis_settings = redis_settings or RedisSettings()
        self.redis = redis_client(redis_settings)
        self.broker = RedisBroker(
            redis_settings.url,
            password=redis_settings.password.get_secret_value() if redis_settings.password else None,
            graceful_timeout=settings.grace_s,
            logger=FASTSTREAM_LOGGER,
            log_level=logging.DEBUG,  # per-message "Received/Processed" lines only at DEBUG
        )
        self.subscriptions: list[Subscription[Any]] = []
        self._periodic: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        self._tasks: list[asyncio.Task[None]] = []

    def subscribe(
        self,
        stream: str,
        adapter: TypeAdapter[T],
        handle: BatchHandler[T],
        on_reject: RejectHook | None = None,
    ) -> None:
        subscription = Subscription(self, stream, adapter, handle, on_reject)
        self.subscriptions.append(subscription)

        async def on_batch(msg: RedisBatchStreamMessage) -> None:
            raw = msg.raw_message
            entries = [
                Entry(id=i, fields=f) for i, f in zip(raw["message_ids"], raw["data"], strict=True)
            ]
            await subscription.process(entries)

        self.broker.subscriber(
            stream=StreamSub(
                stream,
                group=self.group,
                consumer=self.settings.consumer,
                batch=True,
                max_records=self.settings.batch_size,
                polling_interval=self.settings.poll_ms,
            ),
            parser=_raw_parser,
            decoder=_no_decode,
            ack_policy=AckPolicy.MANUAL,
        )(on_batch)

    async def start(self) -> None:
        """Before the broker starts: groups at 0. After: the reclaim loop."""
        for subscription in self.subscriptions:
            await ensure_group(self.redis, subscription.stream, self.group)

    def every(self, interval_s: float, job: Callable[[], Awaitable[None]]) -> None:
        """Run `job` every `interval_s` seconds while the stage runs (e.g. index compaction)."""
        self._periodic.append((interval_s, job))

    async def start_background(self) -> None:
        if self.subscriptions:
            self.every(self.settings.reclaim_interval_s, self._reclaim_all)
        self._tasks = [
            asyncio.create_task(self._run_every(interval, job)) for interval, job in self._periodic
        ]

    @staticmethod
    async def _run_every(interval_s: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await job()
            except Exception:
                log.exception("background job failed", job=getattr(job, "__name__", str(job)))

    def app(self) -> FastStream:
        """The FastStream app: groups before subscribers start, reclaim after, close last."""
        configure_logging(self.settings.log_level)
        return FastStream(
            self.broker,
            logger=FASTSTREAM_LOGGER,
            on_startup=[self.start],
            after_startup=[self.start_background],
            after_shutdown=[self.stop],
        )

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.redis.aclose()

    async def publish(self, publications: Sequence[Publication]) -> None:
        """Publish now, outside any ack (e.g. streamed answer deltas)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in publications:
                pipe.xadd(p.stream, wire.encode(p.event), maxlen=self.streams.maxlen, approximate=True)
            await pipe.execute()

    async def commit(
        self,
        subscription: Subscription[Any],
        entries: Sequence[Entry],
        outcomes: dict[bytes, Outcome],
        deliveries: Sequence[int] = (),
    ) -> None:
        """Publish every outcome and XACK its entry in one MULTI/EXEC transaction."""
        if not outcomes:
            return
        acked: list[bytes] = []
        async with self.redis.pipeline(transaction=True) as pipe:
            for index, entry in enumerate(entries):
                outcome = outcomes.get(entry.id)
                if outcome is None:
                    continue
                acked.append(entry.id)
                if isinstance(outcome, PermanentError):
                    count = deliveries[index] if deliveries else 1
                    self._dead_letter(pipe, subscription.stream, entry, outcome.reason, count)
                    hook = subscription.on_reject
                    outcome = hook(entry, outcome.reason) if hook is not None else ()
                for p in outcome:
                    pipe.xadd(
                        p.stream, wire.encode(p.event), maxlen=self.streams.maxlen, approximate=True
                    )
            pipe.xack(subscription.stream, self.group, *acked)
            await pipe.execute()

    def _dead_letter(self, pipe: Any, stream: str, entry: Entry, reason: str, count: int) -> None:
        subject = wire.subject_of(entry.fields)
        letter = DeadLetter(
            stage=self.name,
            source_stream=stream,
            entry_id=entry.id.decode(),
            reason=reason,
            deliveries=count,
            doc_id=subject.get("doc_id"),
            version=subject.get("version"),
            query_id=subject.get("query_id"),
        )
        log.warning("dead-lettered", entry_id=letter.entry_id, reason=reason, **subject)
        fields = wire.encode(letter)
        fields[b"payload"] = wire.payload_of(entry.fields)
        pipe.xadd(self.streams.dlq, fields, maxlen=self.streams.maxlen, approximate=True)

    async def _reclaim_all(self) -> None:
        for subscription in self.subscriptions:
            try:
                await self.reclaim(subscription)
            except (RedisConnectionError, RedisTimeoutError, TransientError) as exc:
                log.warning("reclaim failed", stream=subscription.stream, reason=str(exc))

    async def reclaim(self, subscription: Subscription[Any]) -> int:
        """Take over entries idle longer than `reclaim_idle_ms` and process them; returns count."""
        total = 0
        start = b"0-0"
        while True:
            next_id, claimed, deleted = await self.redis.xautoclaim(
                subscription.stream,
                self.group,
                self.settings.consumer,
                min_idle_time=self.settings.reclaim_idle_ms,
                start_id=start,
                count=self.settings.batch_size,
            )
            if deleted:
                log.error("pending entries were trimmed before processing", ids=len(deleted))
            entries = [Entry(id=i, fields=f) for i, f in claimed if f is not None]
            if entries:
                pending = await self.redis.xpending_range(
                    subscription.stream,
                    self.group,
                    min=entries[0].id,
                    max=entries[-1].id,
                    count=len(entries) * 2,
                    consumername=self.settings.consumer,
                )
                counts = {p["message_id"]: int(p["times_delivered"]) for p in pending}
                await subscription.process(entries, [counts.get(e.id, 1) for e in entries])
                total += len(entries)
            if next_id in (b"0-0", "0-0"):
                return total
            start = next_id
