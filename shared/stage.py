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

from shared import metrics, ownership, tracing, wire
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
from shared.errors import PermanentError, TransientError
from shared.logging import configure_logging
from shared.ops_server import OpsServer, ReadinessCheck
from shared.readiness import ready_key
from shared.settings import RedisSettings, StreamSettings
from shared.stage_settings import StageSettings
from shared.stream_maintenance import age_floor, remove_stale_consumers, trim_acknowledged
from shared.subscription import DeadlineOf, OnExpired, Subscription

T = TypeVar("T")
log = structlog.get_logger("ragstream.stage")
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
READY_TTL_S = 15.0
"""A stage's readiness key expires this long after its last renewal (renewed every third)."""
FASTSTREAM_LOGGER = logging.getLogger("ragstream.faststream")
Projection = Callable[[Any, Any], None]
"""Queues the read-model update of one published event on the commit's Redis pipeline."""
StreamProjection = Callable[[Any, str, Any], None]
"""Like `Projection`, also told the stream (for `Stage.project_under`)."""
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

    def project(self, stream: str, projection: "Projection") -> None:
        """Also apply every event this stage publishes on `stream` to a read model, in the same
        transaction as the XADD (e.g. the embedder's per-doc state, see `shared.doc_state`)."""
        self._projections[stream] = projection

    def project_under(self, prefix: str, projection: StreamProjection) -> None:
        """`project` for every stream whose name starts with `prefix` (e.g. reply streams)."""
        self._projections_under.append((prefix, projection))

    def keep_history(self, stream: str) -> None:
        """Never trim input `stream` by acks: others read its history (e.g. freshness acks)."""
        self._kept_history.add(stream)

    def _project(self, pipe: Any, publication: Publication) -> None:
        projection = self._projections.get(publication.stream)
        if projection is not None:
            projection(pipe, publication.event)
        for prefix, project in self._projections_under:
            if publication.stream.startswith(prefix):
                project(pipe, publication.stream, publication.event)

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

    def _xadd_command(self, stream: str, fields: wire.Fields) -> ownership.Command:
        """`_xadd` as a command, for the scripts that publish (`shared.ownership`)."""
        command: ownership.Command = ["XADD", stream]
        if self.streams.maxlen:
            command += ["MAXLEN", "~", self.streams.maxlen]
        elif stream not in self._untrimmed:
            command += ["MINID", "~", age_floor(self.settings.retention_s)]
        command.append("*")
        for name, value in fields.items():
            command += [name, value]
        return command

    async def publish(self, publications: Sequence[Publication]) -> None:
        """Publish now, outside any ack (e.g. streamed answer deltas).

        An output of a key an `Exclusive` subscription works on goes out only while this
        consumer works on the key, the request is not answered yet and no other entry's handler
        streamed for it first (`ownership.STREAMED`); otherwise it is dropped."""
        fences = [self._fence(p) for p in publications] if self._exclusive else []
        async with self.redis.pipeline(transaction=False) as pipe:
            if any(fenced for fenced, _ in fences):
                scripted: list[tuple[ownership.Lease | None, ownership.Command]] = []
                for p, (fenced, lease) in zip(publications, fences, strict=True):
                    if fenced and lease is None:
                        continue  # not (or no longer) this consumer's work
                    fields = wire.encode(p.event)
                    tracing.inject(fields)
                    scripted.append((lease, self._xadd_command(p.stream, fields)))
                    self._project(pipe, p)
                pipe.eval(ownership.STREAMED, 0, *ownership.streamed_args(scripted))
            else:
                for p in publications:
                    fields = wire.encode(p.event)
                    tracing.inject(fields)
                    self._xadd(pipe, p.stream, fields)
                    self._project(pipe, p)
            await pipe.execute()

    def _fence(self, publication: Publication) -> tuple[bool, ownership.Lease | None]:
        """Whether `publication` belongs to an exclusive key, and this consumer's lease on it."""
        for stream, exclusive in self._exclusive.items():
            key = exclusive.streamed_key(publication.event)
            if key is not None:
                return True, self.leases.of_key(stream, key)
        return False, None

    async def commit(
        self,
        subscription: Subscription[Any],
        entries: Sequence[Entry],
        outcomes: dict[bytes, Outcome],
        deliveries: Sequence[int] = (),
        spans: Mapping[bytes, Span] | None = None,
    ) -> None:
        """Publish every outcome and XACK its entry in one MULTI/EXEC transaction — for the
        entries this consumer still owns; the outputs of the others are withheld (see
        `_commit_once`).

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
        """One MULTI/EXEC: `ownership.COMMIT` publishes the outputs of the entries this consumer
        still owns and acks them; the read-model projections of the outputs follow it."""
        stream = subscription.stream
        exclusive = self._exclusive.get(stream)
        marker_ms = _ms(exclusive.ttl_s) if exclusive is not None else 1
        args: list[Any] = [self.group, self.settings.consumer, marker_ms]
        committed: list[tuple[Entry, bool]] = []
        async with self.redis.pipeline(transaction=True) as pipe:
            projected: list[Publication] = []
            for index, entry in enumerate(entries):
                outcome = outcomes.get(entry.id)
                if outcome is None:
                    continue
                always: list[ownership.Command] = []
                dead = isinstance(outcome, PermanentError)
                if isinstance(outcome, PermanentError):
                    count = deliveries[index] if deliveries else 1
                    always.append(self._dead_letter(stream, entry, outcome.reason, count))
                    hook = subscription.on_reject
                    outcome = hook(entry, outcome.reason) if hook is not None else ()
                span = spans.get(entry.id)
                commands: list[ownership.Command] = []
                for p in outcome:
                    fields = wire.encode(p.event)
                    if span is not None:
                        tracing.inject(fields, span)
                    commands.append(self._xadd_command(p.stream, fields))
                    projected.append(p)
                lease = self.leases.of_entry(stream, entry.id)
                args += ownership.commit_entry_args(entry.id, lease, always, commands)
                committed.append((entry, dead))
            pipe.eval(ownership.COMMIT, 1, stream, *args)
            for p in projected:  # of every output: see docs/reliability.md
                self._project(pipe, p)
            states = (await pipe.execute())[0]
        self.leases.drop(stream, [entry.id for entry, _ in committed])
        self._tally(stream, committed, [int(state) for state in states])

    def _tally(self, stream: str, committed: list[tuple[Entry, bool]], states: list[int]) -> None:
        """Count and log what `ownership.COMMIT` did with each entry."""
        acked = [e.id for (e, _), s in zip(committed, states, strict=True) if s in _ACKED]
        dead = sum(1 for (_, d), s in zip(committed, states, strict=True) if d and s in _ACKED)
        self.failures.forget(acked)
        metrics.acked.labels(self.name, stream).inc(len(acked))
        if dead:
            metrics.dead_lettered.labels(self.name, stream).inc(dead)
        for state, reason in _WITHHELD.items():
            ids = [e.id.decode() for (e, _), s in zip(committed, states, strict=True) if s == state]
            if ids:
                metrics.withheld.labels(self.name, stream, reason).inc(len(ids))
                log.info("outputs withheld", reason=reason, stream=stream, entry_ids=ids[:10])

    def _dead_letter(self, stream: str, entry: Entry, reason: str, count: int) -> ownership.Command:
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
        return self._xadd_command(self.streams.dlq, fields)

    # ---- in-flight entries, reclaim, maintenance ----------------------------------------------

    async def deliver(
        self,
        subscription: Subscription[Any],
        entries: Sequence[Entry],
        deliveries: Sequence[int] = (),
    ) -> None:
        """Process entries read (FastStream's subscriber) or reclaimed (`reclaim`).

        With `Exclusive` work, only the entries whose key this consumer leases are handled; an
        entry of a request answered already is acked without outputs, one whose key another
        consumer leases is left pending (see `shared.ownership`)."""
        exclusive = self._exclusive.get(subscription.stream)
        if exclusive is None:
            await subscription.process(entries, deliveries)
            return
        stream = subscription.stream
        with self.in_flight.holding(stream, entries):
            go, done = await self._lease(subscription, exclusive, entries)
        try:
            if done:
                with self.in_flight.holding(stream, done):
                    await self.commit(subscription, done, {entry.id: () for entry in done})
            if go:
                ids = [entry.id for entry in entries]
                counts = dict(zip(ids, deliveries, strict=True)) if deliveries else {}
                await subscription.process(go, [counts[e.id] for e in go] if counts else ())
        finally:
            left = self.leases.drop(stream, [entry.id for entry in go])
            if left:  # not committed: free the key for a redelivery now rather than at expiry
                with contextlib.suppress(*REDIS_DOWN):
                    await self.redis.eval(ownership.RELEASE, 0, *ownership.release_args(left))

    async def _lease(
        self, subscription: Subscription[Any], exclusive: Exclusive[Any], entries: Sequence[Entry]
    ) -> tuple[list[Entry], list[Entry]]:
        """The entries to handle (leased now, or unreadable: dead-lettered by the subscription)
        and those of requests answered already; the rest is left pending."""
        stream = subscription.stream
        unreadable: set[bytes] = set()
        asked: list[tuple[Entry, ownership.Lease]] = []
        keys: set[str] = set()
        for entry in entries:
            try:
                event = wire.decode(
                    subscription.adapter, entry.fields, max_bytes=self.settings.max_payload_bytes
                )
            except PermanentError:
                unreadable.add(entry.id)
                continue
            key = exclusive.key(event)
            if key in keys or self.leases.working_on(stream, key):
                continue  # one entry per key at a time: this one waits for redelivery
            keys.add(key)
            lease = ownership.lease_for(
                stream, self.group, self.settings.consumer, entry.id,
                key=key, request=exclusive.request(event) if exclusive.request else None,
                marker_ms=_ms(exclusive.ttl_s),
            )  # fmt: skip
            asked.append((entry, lease))
        verdicts: list[int] = []
        if asked:
            lease_ms = max(1, self.settings.reclaim_idle_ms)
            args = ownership.acquire_args(lease_ms, [lease for _, lease in asked])
            verdicts = [int(v) for v in await self.redis.eval(ownership.ACQUIRE, 0, *args)]
        leased: set[bytes] = set()
        done: list[Entry] = []
        for (entry, lease), verdict in zip(asked, verdicts, strict=True):
            if verdict == ownership.LEASED:
                self.leases.add(stream, entry.id, lease)
                leased.add(entry.id)
            elif verdict == ownership.DONE:
                done.append(entry)
        go = [e for e in entries if e.id in leased or e.id in unreadable]
        waiting = len(entries) - len(go) - len(done)
        if waiting:
            log.info("left pending: another entry of its key is being handled", entries=waiting)
        if done:
            log.info("acked without outputs: its request was answered", entries=len(done))
        return go, done

    async def _heartbeat(self) -> None:
        """Reset the idle time of the in-flight entries this consumer still owns, so that slow
        work (a long batch, a store outage being retried) is not reclaimed, and renew their
        leases. `ownership.HEARTBEAT` checks the owner before its XCLAIM JUSTID (which counts no
        delivery): an entry a sibling took over is left to it, never taken back."""
        lease_ms = max(1, self.settings.reclaim_idle_ms)
        for stream, ids in self.in_flight.by_stream().items():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                leases = [self.leases.of_entry(stream, entry_id) for entry_id in chunk]
                args = ownership.heartbeat_args(
                    self.group, self.settings.consumer, lease_ms, chunk, leases
                )
                try:
                    taken, gone = await self.redis.eval(ownership.HEARTBEAT, 1, stream, *args)
                except REDIS_DOWN as exc:
                    log.warning("heartbeat failed", stream=stream, reason=str(exc))
                    return
                self.in_flight.lose(stream, gone)
                if self.in_flight.lose(stream, taken):
                    log.warning(
                        "entries taken over by another consumer: their outputs will not be "
                        "published from here", stream=stream, entries=len(taken),
                    )  # fmt: skip

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
            handling = [e.id for e in entries if self.in_flight.holds(subscription.stream, e.id)]
            if handling:  # this process froze (or lost Redis) past reclaim_idle_ms: still ours
                self.in_flight.regain(subscription.stream, handling)
                entries = [e for e in entries if e.id not in handling]
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
                await self.deliver(subscription, entries, [counts.get(e.id, 1) for e in entries])
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
                if subscription.stream not in self._kept_history:
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


_ACKED = (ownership.COMMITTED, ownership.ANSWERED)
_WITHHELD = {
    ownership.TAKEN_OVER: "taken_over",
    ownership.ANSWERED: "answered",
    ownership.NOT_PENDING: "acked_already",
}
"""`ownership.COMMIT`'s verdicts under which an entry's outputs are not published."""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


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
