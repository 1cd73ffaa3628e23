"""Redelivery for `shared.stage.Stage`: what is read or reclaimed is delivered (leased first
for `Exclusive` work), in-flight entries are kept from being reclaimed while this consumer owns
them (the heartbeat), idle entries of dead consumers are taken over, acknowledged entries are
trimmed and stale consumers removed."""

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog

from shared import metrics, ownership, wire
from shared.delivery import Entry, Exclusive, InFlight
from shared.errors import REDIS_DOWN, PermanentError, TransientError
from shared.stage_publishing import Publishing, ms
from shared.stream_maintenance import remove_stale_consumers, trim_acknowledged

if TYPE_CHECKING:
    from shared.subscription import Subscription

log = structlog.get_logger("ragstream.stage")


class Redelivery(Publishing):
    """Delivery, heartbeat, reclaim and maintenance (state set up by `Stage.__init__`)."""

    subscriptions: "list[Subscription[Any]]"
    in_flight: InFlight
    _kept_history: set[str]
    _stopping: asyncio.Event

    def keep_history(self, stream: str) -> None:
        """Never trim input `stream` by acks: others read its history (e.g. freshness acks)."""
        self._kept_history.add(stream)

    async def deliver(
        self,
        subscription: "Subscription[Any]",
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
        self, subscription: "Subscription[Any]", exclusive: Exclusive[Any], entries: Sequence[Entry]
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
                marker_ms=ms(exclusive.ttl_s),
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

    async def reclaim(self, subscription: "Subscription[Any]") -> int:
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
