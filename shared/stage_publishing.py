"""Publishing and acking for `shared.stage.Stage`: outputs and the XACK of their entry in one
MULTI/EXEC (only for the entries this consumer still owns, `shared.ownership`), dead letters,
streamed outputs, and the read models projected from what is published."""

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry.trace import Span
from redis.asyncio import Redis

from shared import metrics, ownership, tracing, wire
from shared.contracts import DeadLetter
from shared.delivery import Entry, Exclusive, Failures, Outcome, Publication
from shared.errors import REDIS_DOWN, PermanentError
from shared.settings import StreamSettings
from shared.stage_settings import StageSettings
from shared.stream_maintenance import age_floor

if TYPE_CHECKING:
    from shared.subscription import Subscription

log = structlog.get_logger("ragstream.stage")
Projection = Callable[[Any, Sequence[Any]], None]
"""Queues the read-model update of the events one commit publishes on a stream, in order, on
the commit's Redis pipeline."""
StreamProjection = Callable[[Any, str, Any], None]
"""Like `Projection`, also told the stream (for `Publishing.project_under`)."""


class Publishing:
    """The publish-and-ack half of a stage (state set up by `Stage.__init__`)."""

    name: str
    settings: StageSettings
    group: str
    streams: StreamSettings
    redis: Redis
    leases: ownership.Leases
    failures: Failures
    _exclusive: dict[str, Exclusive[Any]]
    _untrimmed: set[str]
    _projections: dict[str, Projection]
    _projections_under: list[tuple[str, StreamProjection]]

    def project(self, stream: str, projection: Projection) -> None:
        """Also apply every event this stage publishes on `stream` to a read model, in the same
        transaction as the XADD (e.g. the embedder's per-doc state, see `shared.doc_state`); the
        projection gets all of one commit's events at once."""
        self._projections[stream] = projection

    def project_under(self, prefix: str, projection: StreamProjection) -> None:
        """`project` for every stream whose name starts with `prefix` (e.g. reply streams)."""
        self._projections_under.append((prefix, projection))

    def _project(self, pipe: Any, publications: Sequence[Publication]) -> None:
        by_stream: dict[str, list[Any]] = {}
        for publication in publications:
            by_stream.setdefault(publication.stream, []).append(publication.event)
        for stream, events in by_stream.items():
            if (projection := self._projections.get(stream)) is not None:
                projection(pipe, events)
            for prefix, project in self._projections_under:
                if stream.startswith(prefix):
                    for event in events:
                        project(pipe, stream, event)

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
                projected: list[Publication] = []
                for p, (fenced, lease) in zip(publications, fences, strict=True):
                    if fenced and lease is None:
                        continue  # not (or no longer) this consumer's work
                    fields = wire.encode(p.event)
                    tracing.inject(fields)
                    scripted.append((lease, self._xadd_command(p.stream, fields)))
                    projected.append(p)
                pipe.eval(ownership.STREAMED, 0, *ownership.streamed_args(scripted))
                self._project(pipe, projected)
            else:
                for p in publications:
                    fields = wire.encode(p.event)
                    tracing.inject(fields)
                    self._xadd(pipe, p.stream, fields)
                self._project(pipe, publications)
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
        subscription: "Subscription[Any]",
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
        subscription: "Subscription[Any]",
        entries: Sequence[Entry],
        outcomes: dict[bytes, Outcome],
        deliveries: Sequence[int],
        spans: Mapping[bytes, Span],
    ) -> None:
        """One MULTI/EXEC: `ownership.COMMIT` publishes the outputs of the entries this consumer
        still owns and acks them; the read-model projections of the outputs follow it."""
        stream = subscription.stream
        exclusive = self._exclusive.get(stream)
        marker_ms = ms(exclusive.ttl_s) if exclusive is not None else 1
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
            self._project(pipe, projected)  # of every output: see docs/reliability.md
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


_ACKED = (ownership.COMMITTED, ownership.ANSWERED)
_WITHHELD = {
    ownership.TAKEN_OVER: "taken_over",
    ownership.ANSWERED: "answered",
    ownership.NOT_PENDING: "acked_already",
}
"""`ownership.COMMIT`'s verdicts under which an entry's outputs are not published."""


def ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
