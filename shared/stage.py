"""The consume → handle → publish-and-ack loop every stage runs, on top of FastStream.

Delivery semantics (see docs/reliability.md):
- Consumer groups are created at id `0` before the subscribers start, so entries published before
  a stage first ran are not skipped.
- An entry is acked in the same MULTI/EXEC transaction that publishes its outputs (or its dead
  letter): a crash leaves both undone or both done. The transaction publishes and acks only
  entries this consumer still owns (checked in a Lua script inside it, `shared.ownership`): an
  entry a sibling reclaimed meanwhile is left to it, and a commit retried because Redis dropped
  the connection does not publish twice if the lost reply was a success.
- Bad input (`PermanentError`) is dead-lettered with its reason and acked; the rest of the batch
  flows. Transient errors are retried in-process with backoff (without burning the delivery
  budget); after `transient_retry_s` the entries stay pending for reclaim. While a batch is in
  flight the heartbeat resets the idle time of those of its entries the consumer still owns
  (XCLAIM JUSTID, which does not count as a delivery) so that no sibling takes over work that is
  merely slow; an entry a sibling took over (the consumer froze longer than `reclaim_idle_ms`)
  is never taken back.
- An unexpected exception fails the batch: it is retried entry by entry, so the good entries
  flow and only the poison entry stays pending.
- A reclaim loop takes over entries left pending longer than `reclaim_idle_ms` (XAUTOCLAIM), by
  dead consumers or by failed handling; an entry delivered more than `max_deliveries` times is
  dead-lettered. An entry this process is still handling is not handled a second time.
- Opt-in, per subscription (`Exclusive`): work done once per key — one consumer at a time per
  key (a lease), the outputs of one entry per request, and outputs streamed while handling only
  from the first consumer that streamed for the request (see `shared.ownership`).
- Maintenance: acknowledged entries are trimmed from the input streams (never pending or unread
  ones) and consumers idle with nothing pending are removed.
- On SIGTERM: stop reading, finish and ack what is in flight (within `grace_s`), exit.
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlparse

import structlog
from faststream import AckPolicy, FastStream
from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisBatchStreamMessage
from faststream.redis.message import FAKE_CONSUMER, BatchStreamMessage
from faststream.redis.message import RedisBatchStreamMessage as BatchMessage
from faststream.security import SASLPlaintext
from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import ownership, tracing
from shared.contracts import DeadLetter
from shared.delivery import (
    BatchHandler,
    Entry,
    Exclusive,
    Failures,
    InFlight,
    Outcome,
    Publication,
    RejectHook,
)
from shared.errors import REDIS_DOWN
from shared.logging import configure_logging
from shared.ops_server import OpsServer, ReadinessCheck
from shared.readiness import ready_key
from shared.settings import RedisSettings, StreamSettings
from shared.stage_health import READY_TTL_S, Health
from shared.stage_publishing import Projection, StreamProjection
from shared.stage_redelivery import Redelivery
from shared.stage_settings import StageSettings
from shared.subscription import DeadlineOf, OnExpired, Subscription

T = TypeVar("T")
log = structlog.get_logger("ragstream.stage")
FASTSTREAM_LOGGER = logging.getLogger("ragstream.faststream")
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


class Stage(Redelivery, Health):
    """A stage's broker, its own Redis client for publish-and-ack, and its subscriptions.

    The runtime is split by concern: publishing and acking (`shared.stage_publishing`),
    delivery, heartbeat, reclaim and maintenance (`shared.stage_redelivery`), readiness and
    group metrics (`shared.stage_health`); this module wires them to FastStream."""

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
        self._projections_under: list[tuple[str, StreamProjection]] = []
        self._kept_history: set[str] = set()
        self._periodic: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._running = False
        self._ops_server: OpsServer | None = None
        self._readiness_checks: list[ReadinessCheck] = []
        self.in_flight = InFlight()
        self.leases = ownership.Leases()
        self._exclusive: dict[str, Exclusive[Any]] = {}
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
        *,
        deadline_of: DeadlineOf[T] | None = None,
        on_expired: OnExpired[T] | None = None,
        exclusive: Exclusive[T] | None = None,
    ) -> None:
        """Read `stream` with `handle`; see `Subscription` for `on_reject` and the deadline
        hooks (`deadline_of`, `on_expired`), `Exclusive` for `exclusive`."""
        from typing import Annotated

        subscription = Subscription(
            self, stream, adapter, handle, on_reject, deadline_of=deadline_of, on_expired=on_expired
        )
        self.subscriptions.append(subscription)
        if exclusive is not None:
            self._exclusive[stream] = exclusive
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
            await self.deliver(subscription, entries)

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
