"""The consume → handle → publish-and-ack loop every stage runs, on top of FastStream.

Delivery semantics (see docs/reliability.md):
- Consumer groups are created at id `0` before the subscribers start, so entries published before
  a stage first ran are not skipped.
- An entry is acked in the same MULTI/EXEC transaction that publishes its outputs (or its dead
  letter): a crash leaves both undone or both done. (A commit retried because Redis dropped the
  connection may, if the lost reply was a success, publish its outputs twice: downstream is
  idempotent.)
- Bad input (`PermanentError`) is dead-lettered with its reason and acked; the rest of the batch
  flows. Transient errors are retried in-process with backoff (without burning the delivery
  budget); after `transient_retry_s` the entries stay pending for reclaim. While a batch is in
  flight its entries are re-claimed by their own consumer (XCLAIM JUSTID, which does not count
  as a delivery) so that no sibling takes over work that is merely slow.
- An unexpected exception fails the batch: it is retried entry by entry, so the good entries
  flow and only the poison entry stays pending.
- A reclaim loop takes over entries left pending longer than `reclaim_idle_ms` (XAUTOCLAIM), by
  dead consumers or by failed handling; an entry delivered more than `max_deliveries` times is
  dead-lettered.
- Maintenance: acknowledged entries are trimmed from the input streams (never pending or unread
  ones) and consumers idle with nothing pending are removed.
- On SIGTERM: stop reading, finish and ack what is in flight (within `grace_s`), exit.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse

import structlog
from faststream import AckPolicy, FastStream
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisBatchStreamMessage
from faststream.redis.message import FAKE_CONSUMER, BatchStreamMessage
from faststream.redis.message import RedisBatchStreamMessage as BatchMessage
from faststream.security import SASLPlaintext
from opentelemetry.trace import Span
from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import metrics, tracing, wire
from shared.contracts import DeadLetter
from shared.delivery import (
    BatchHandler,
    Entry,
    Failures,
    InFlight,
    Outcome,
    Publication,
    RejectHook,
)
from shared.errors import PermanentError, TransientError
from shared.logging import configure_logging
from shared.ops_server import OpsServer, ReadinessCheck
from shared.readiness import ready_key
from shared.settings import RedisSettings, StreamSettings
from shared.stage_settings import StageSettings
from shared.stream_maintenance import age_floor, remove_stale_consumers, trim_acknowledged
from shared.subscription import Subscription

T = TypeVar("T")
log = structlog.get_logger("ragstream.stage")
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
READY_TTL_S = 15.0
"""A stage's readiness key expires this long after its last renewal (renewed every third)."""
FASTSTREAM_LOGGER = logging.getLogger("ragstream.faststream")
Projection = Callable[[Any, Any], None]
"""Queues the read-model update of one published event on the commit's Redis pipeline."""
"""FastStream's own lines go through the root handler: JSON on stderr like ours."""


def redis_client(settings: RedisSettings) -> "Redis":
    password = settings.password.get_secret_value() if settings.password else None
    return Redis.from_url(settings.url, password=password)


def broker_security(settings: RedisSettings) -> SASLPlaintext | None:
    """The password (if not in the URL) for FastStream; the user is the URL's, else `default`."""
    if settings.password is None:
        return None
    user = urlparse(settings.url).username or "default"
    return SASLPlaintext(username=user, password=settings.password.get_secret_value())


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
            security=broker_security(redis_settings),
            graceful_timeout=settings.grace_s,
            logger=FASTSTREAM_LOGGER,
            log_level=logging.DEBUG,  # per-message "Received/Processed" lines only at DEBUG
        )
        self.subscriptions: list[Subscription[Any]] = []
        self._projections: dict[str, Projection] = {}
        self._periodic: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._running = False
        self._ops_server: OpsServer | None = None
        self._readiness_checks: list[ReadinessCheck] = []
        self.in_flight = InFlight()
        self.failures = Failures(settings.max_deliveries)
        self._untrimmed = {
            self.streams.docs, self.streams.chunks, self.streams.queries,
            self.streams.retrieved, self.streams.reranked, self.streams.dlq,
        }  # fmt: skip
        """Stage inputs (trimmed by their consumers, safely) and the DLQ (purged by hand)."""

    def subscribe(
        self,
        stream: str,
        adapter: TypeAdapter[T],
        handle: BatchHandler[T],
        on_reject: RejectHook | None = None,
    ) -> None:
        from typing import Annotated

        subscription = Subscription(self, stream, adapter, handle, on_reject)
        self.subscriptions.append(subscription)
        schema, title = self._payload_schema(adapter)

        async def on_batch(
            event: Annotated[Any, schema, title], msg: RedisBatchStreamMessage
        ) -> None:
            # `event` is never filled (entries are decoded one by one by the subscription, so
            # that a bad one is dead-lettered alone): it tells FastStream's AsyncAPI document
            # what an entry carries.
            raw = msg.raw_message
            entries = [
                Entry(id=i, fields=f) for i, f in zip(raw["message_ids"], raw["data"], strict=True)
            ]
            await subscription.process(entries)

        read_by = f"Read by the {self.name} stage (consumer group `{self.group}`)."
        fields = type(self.streams).model_fields
        about = next(
            (f.description for n, f in fields.items() if getattr(self.streams, n) == stream), None
        )
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
            title=f"{self.name}:{stream}",
            description=f"{about} {read_by}" if about else read_by,
        )(on_batch)
        if len(self.subscriptions) == 1:
            self.publishes(
                self.streams.dlq,
                DeadLetter,
                f"Entries the {self.name} stage could not process, with the reason; the entry's "
                "original `event` bytes travel beside the DeadLetter in the field `payload`.",
            )

    def publishes(self, stream: str, model: type[Any] | TypeAdapter[Any], description: str) -> None:
        """Declare that this stage publishes `model` events on `stream`: for the AsyncAPI
        document only (`python -m ragstream.asyncapi`), as outputs go out by XADD in `commit`."""
        from typing import Annotated

        adapter = model if isinstance(model, TypeAdapter) else TypeAdapter(model)
        schema, title = self._payload_schema(adapter)
        self.broker.publisher(
            stream=stream,
            schema=Annotated[Any, schema, title],
            title=f"{self.name}:{stream}",
            description=description,
        )

    @staticmethod
    def _payload_schema(adapter: TypeAdapter[Any]) -> tuple[Any, Any]:
        """Annotations that show an entry's event in AsyncAPI as `adapter`'s JSON schema, named
        after its model (a union after its members, e.g. `DocUpsertOrDocDelete`)."""
        from pydantic import Field, GetPydanticSchema

        schema = adapter.json_schema()
        members = [m["$ref"].rsplit("/", 1)[-1] for m in schema.get("oneOf", ()) if "$ref" in m]
        return (
            GetPydanticSchema(get_pydantic_json_schema=lambda _, h: h(adapter.core_schema)),
            Field(title=schema.get("title") or "Or".join(members) or "Event"),
        )

    def project(self, stream: str, projection: "Projection") -> None:
        """Also apply every event this stage publishes on `stream` to a read model, in the same
        transaction as the XADD (e.g. the embedder's per-doc state, see `shared.doc_state`)."""
        self._projections[stream] = projection

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Before the broker starts: groups at 0. After: the reclaim loop."""
        for subscription in self.subscriptions:
            await ensure_group(self.redis, subscription.stream, self.group)

    async def start_ops_server(self) -> None:
        """Serve /livez, /readyz and /metrics on `http_port` (first thing at startup)."""
        tracing.configure_tracing(f"ragstream-{self.name}")
        if self.settings.http_port and self._ops_server is None:
            server = OpsServer(self.settings.http_host, self.settings.http_port, self.readiness)
            await server.start()
            self._ops_server = server

    def check_ready(self, check: ReadinessCheck) -> None:
        """Add a readiness condition (e.g. the index answers); it returns what is wrong."""
        self._readiness_checks.append(check)

    async def readiness(self) -> list[str]:
        """Why this stage should get no traffic now (empty: ready)."""
        if self._stopping.is_set():
            return ["draining after SIGTERM"]
        if not self._running:
            return ["starting"]
        try:
            async with asyncio.timeout(2.0):
                for subscription in self.subscriptions:
                    groups = await self.redis.xinfo_groups(subscription.stream)
                    if not any(_text(g["name"]) == self.group for g in groups):
                        return [f"consumer group {self.group} is missing on {subscription.stream}"]
        except (*REDIS_DOWN, ResponseError, TimeoutError) as exc:
            return [f"redis: {exc or type(exc).__name__}"]
        problems: list[str] = []
        for check in self._readiness_checks:
            problems.extend(await check())
        return problems

    def every(self, interval_s: float, job: Callable[[], Awaitable[None]]) -> None:
        """Run `job` every `interval_s` seconds while the stage runs (e.g. index compaction)."""
        self._periodic.append((interval_s, job))

    async def start_background(self) -> None:
        self._stopping = asyncio.Event()
        self._running = True
        if self.subscriptions:
            await self._announce()
            self.every(self.settings.metrics_interval_s, self._sample_groups)
            self.every(READY_TTL_S / 3, self._announce)
            self.every(self.settings.reclaim_interval_s, self._reclaim_all)
            self.every(self.settings.reclaim_idle_ms / 3000, self._heartbeat)
            self.every(self.settings.maintenance_interval_s, self.maintain)
        self._tasks = [
            asyncio.create_task(self._run_every(interval, job)) for interval, job in self._periodic
        ]

    async def _run_every(self, interval_s: float, job: Callable[[], Awaitable[None]]) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval_s)
                return
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
            on_startup=[self.start_ops_server, self.start],
            after_startup=[self.start_background],
            on_shutdown=[self.begin_stop],
            after_shutdown=[self.stop],
        )

    async def begin_stop(self) -> None:
        """SIGTERM: background jobs finish the round they are in and start no other; the
        stage stops announcing itself as ready."""
        self._stopping.set()
        keys = [ready_key(s.stream, self.group, self.settings.consumer) for s in self.subscriptions]
        if keys:
            with contextlib.suppress(*REDIS_DOWN):
                await self.redis.delete(*keys)

    async def _announce(self) -> None:
        """Tell `ragstream up` (and anyone asking) that this consumer is up and reading."""
        if self._stopping.is_set():
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for subscription in self.subscriptions:
                    key = ready_key(subscription.stream, self.group, self.settings.consumer)
                    pipe.set(key, str(time.time()), px=int(READY_TTL_S * 1000))
                await pipe.execute()
        except REDIS_DOWN as exc:
            log.warning("readiness announcement failed", reason=str(exc))

    async def stop(self) -> None:
        """After the broker stopped (in-flight batches done): wait for background jobs, close."""
        self._stopping.set()
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=self.settings.grace_s)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.redis.aclose()
        if self._ops_server is not None:
            await self._ops_server.stop()
            self._ops_server = None

    # ---- publishing and acking ---------------------------------------------------------------

    def _xadd(self, pipe: Any, stream: str, fields: wire.Fields) -> None:
        """XADD; streams no group reads are trimmed by age, stage inputs never here."""
        if self.streams.maxlen:  # the documented last resort
            pipe.xadd(stream, fields, maxlen=self.streams.maxlen, approximate=True)
        elif stream in self._untrimmed:
            pipe.xadd(stream, fields)
        else:
            pipe.xadd(stream, fields, minid=age_floor(self.settings.retention_s), approximate=True)

    async def publish(self, publications: Sequence[Publication]) -> None:
        """Publish now, outside any ack (e.g. streamed answer deltas)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for p in publications:
                fields = wire.encode(p.event)
                tracing.inject(fields)
                self._xadd(pipe, p.stream, fields)
            await pipe.execute()

    async def commit(
        self,
        subscription: Subscription[Any],
        entries: Sequence[Entry],
        outcomes: dict[bytes, Outcome],
        deliveries: Sequence[int] = (),
        spans: Mapping[bytes, Span] | None = None,
    ) -> None:
        """Publish every outcome and XACK its entry in one MULTI/EXEC transaction.

        An output carries the trace context of its entry's span (from `spans`), if traced.

        Entries without an outcome are left pending. If Redis is unreachable the transaction is
        retried (the work is done, only its hand-off is missing) for `transient_retry_s`.
        """
        if not outcomes:
            return
        deadline = time.monotonic() + self.settings.transient_retry_s
        delay = 0.1
        while True:
            try:
                await self._commit_once(subscription, entries, outcomes, deliveries, spans or {})
                return
            except REDIS_DOWN as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("commit failed, retrying", reason=str(exc), delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _commit_once(
        self,
        subscription: Subscription[Any],
        entries: Sequence[Entry],
        outcomes: dict[bytes, Outcome],
        deliveries: Sequence[int],
        spans: Mapping[bytes, Span],
    ) -> None:
        acked: list[bytes] = []
        dead = 0
        async with self.redis.pipeline(transaction=True) as pipe:
            for index, entry in enumerate(entries):
                outcome = outcomes.get(entry.id)
                if outcome is None:
                    continue
                acked.append(entry.id)
                if isinstance(outcome, PermanentError):
                    dead += 1
                    count = deliveries[index] if deliveries else 1
                    self._dead_letter(pipe, subscription.stream, entry, outcome.reason, count)
                    hook = subscription.on_reject
                    outcome = hook(entry, outcome.reason) if hook is not None else ()
                span = spans.get(entry.id)
                for p in outcome:
                    fields = wire.encode(p.event)
                    if span is not None:
                        tracing.inject(fields, span)
                    self._xadd(pipe, p.stream, fields)
                    projection = self._projections.get(p.stream)
                    if projection is not None:
                        projection(pipe, p.event)
            pipe.xack(subscription.stream, self.group, *acked)
            await pipe.execute()
        self.failures.forget(acked)
        metrics.acked.labels(self.name, subscription.stream).inc(len(acked))
        if dead:
            metrics.dead_lettered.labels(self.name, subscription.stream).inc(dead)

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
        self._xadd(pipe, self.streams.dlq, fields)

    # ---- in-flight entries, reclaim, maintenance ----------------------------------------------

    async def _heartbeat(self) -> None:
        """Reset the idle time of in-flight entries (XCLAIM JUSTID: no delivery is counted), so
        that slow work (a long batch, a store outage being retried) is not reclaimed."""
        for stream, ids in self.in_flight.by_stream().items():
            for start in range(0, len(ids), 500):
                try:
                    await self.redis.xclaim(
                        stream, self.group, self.settings.consumer, 0,
                        list[Any](ids[start : start + 500]), justid=True,
                    )  # fmt: skip
                except REDIS_DOWN as exc:
                    log.warning("heartbeat failed", stream=stream, reason=str(exc))
                    return

    async def _reclaim_all(self) -> None:
        for subscription in self.subscriptions:
            try:
                await self.reclaim(subscription)
            except (*REDIS_DOWN, TransientError) as exc:
                log.warning("reclaim failed", stream=subscription.stream, reason=str(exc))

    async def reclaim(self, subscription: Subscription[Any]) -> int:
        """Take over entries idle longer than `reclaim_idle_ms` and process them; returns count."""
        total = 0
        start = b"0-0"
        while not self._stopping.is_set():
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
                log.info("reclaimed", stream=subscription.stream, entries=len(entries))
                metrics.redelivered.labels(self.name, subscription.stream).inc(len(entries))
                await subscription.process(entries, [counts.get(e.id, 1) for e in entries])
                total += len(entries)
            if next_id in (b"0-0", "0-0"):
                break
            start = next_id
        return total

    async def _sample_groups(self) -> None:
        """Export the group's lag and pending count per input stream (sampled, not counted)."""
        for subscription in self.subscriptions:
            try:
                groups = await self.redis.xinfo_groups(subscription.stream)
            except (*REDIS_DOWN, ResponseError) as exc:
                log.warning("group sampling failed", stream=subscription.stream, reason=str(exc))
                continue
            for group in groups:
                if _text(group["name"]) != self.group:
                    continue
                labels = (self.name, subscription.stream, self.group)
                metrics.group_pending.labels(*labels).set(int(group["pending"]))
                if group.get("lag") is not None:  # unknown after some trims (Redis docs)
                    metrics.group_lag.labels(*labels).set(int(group["lag"]))

    async def maintain(self) -> None:
        """Trim acknowledged entries from the input streams; remove stale consumers."""
        for subscription in self.subscriptions:
            try:
                await trim_acknowledged(self.redis, subscription.stream)
                await remove_stale_consumers(
                    self.redis,
                    subscription.stream,
                    self.group,
                    idle_s=self.settings.stale_consumer_idle_s,
                    keep=self.settings.consumer,
                )
            except REDIS_DOWN as exc:
                log.warning("maintenance failed", stream=subscription.stream, reason=str(exc))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


__all__ = [
    "BatchHandler",
    "Entry",
    "Outcome",
    "Publication",
    "RejectHook",
    "Stage",
    "Subscription",
    "ensure_group",
    "redis_client",
]
