"""One input stream of a stage: decode its entries, handle them, commit the outcomes.

An exception fails the batch; it is then handled entry by entry so that one poison entry cannot
hold back the others. An entry whose handling alone raises a `PermanentError` (a store that
refuses what it holds, say) is dead-lettered at once with that reason; one whose handling raised
anything else is left pending, to be redelivered by the reclaim loop until `max_deliveries`
dead-letters it. Transient errors are
retried in-process with backoff for `transient_retry_s`, which counts no delivery.

Deadlines (optional, `deadline_of`): an event already past its deadline is not handled; it gets
`on_expired`'s outcome (e.g. an error answer to the client; default: dead-lettered with the
reason "deadline exceeded"), whether it is new, redelivered or reclaimed, committed at once
(before the rest of its batch is handled); a handler that finds an event past its deadline
midway through a batch (it waited for its turn) does the same with `settle_now`. Nothing is
retried past its deadline: the transient-error backoff never sleeps past the earliest deadline
of the events it retries, and at each retry the events past theirs drop out with `on_expired`'s
outcome.
"""

import asyncio
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import structlog
from pydantic import TypeAdapter

from shared import metrics, tracing, wire
from shared.deadlines import is_past, monotonic_of
from shared.delivery import BatchHandler, Entry, Outcome, RejectHook
from shared.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from shared.stage import Stage

T = TypeVar("T")
log = structlog.get_logger("ragstream.stage")
DeadlineOf = Callable[[T], datetime | None]
"""The instant after which working on an event is useless (its client gave up); None: never."""
OnExpired = Callable[[T], Outcome]
"""What to publish for an event past its deadline, instead of handling it."""


class _EarlyCommits:
    """Outcomes settled ahead of the rest of their batch (`settle_now`), each committed alone."""

    def __init__(
        self,
        subscription: "Subscription[Any]",
        good: Sequence[tuple[Entry, Any, int]],
        spans: Any,
        counted: bool,
    ) -> None:
        self.subscription = subscription
        self.by_event = {id(event): (entry, count) for entry, event, count in good}
        self.spans = spans
        self.counted = counted
        self.done: dict[bytes, Outcome] = {}

    async def settle(self, event: object, outcome: Outcome) -> bool:
        found = self.by_event.get(id(event))
        if found is None or found[0].id in self.done:
            return False
        entry, count = found
        deliveries = [count] if self.counted else []
        stage = self.subscription.stage
        await stage.commit(self.subscription, [entry], {entry.id: outcome}, deliveries, self.spans)
        self.done[entry.id] = outcome
        return True

    def outcome_of(self, event: object) -> Outcome | None:
        found = self.by_event.get(id(event))
        return self.done.get(found[0].id) if found is not None else None


_early: ContextVar[_EarlyCommits | None] = ContextVar("ragstream_early_commits", default=None)


async def settle_now(event: object, outcome: Outcome) -> bool:
    """Commit `outcome` for `event` at once (its outputs published and its entry acked in one
    transaction) instead of with the rest of its batch: e.g. the error answer of a query past
    its deadline, whose client should hear now. The handler still returns the outcome; the
    runtime does not commit it twice, nor handle the event again if the batch is retried.
    Returns False (nothing done) outside a stage's handling, e.g. in a unit test."""
    early = _early.get()
    return await early.settle(event, outcome) if early is not None else False


class Subscription(Generic[T]):
    """One input stream of a stage: how to decode its entries and what to do with them."""

    def __init__(
        self,
        stage: "Stage",
        stream: str,
        adapter: TypeAdapter[T],
        handle: BatchHandler[T],
        on_reject: RejectHook | None = None,
        *,
        deadline_of: DeadlineOf[T] | None = None,
        on_expired: OnExpired[T] | None = None,
    ) -> None:
        self.stage = stage
        self.stream = stream
        self.adapter = adapter
        self.handle = handle
        self.on_reject = on_reject
        self.deadline_of = deadline_of
        self.on_expired = on_expired

    async def process(self, entries: Sequence[Entry], deliveries: Sequence[int] = ()) -> None:
        """Decode, handle and commit `entries`; whatever is not committed stays pending."""
        stage, settings = self.stage, self.stage.settings
        started = time.perf_counter()
        labels = (stage.name, self.stream)
        metrics.consumed.labels(*labels).inc(len(entries))
        metrics.batch_size.labels(*labels).observe(len(entries))
        spans = tracing.entry_spans(stage.name, self.stream, entries)
        with stage.in_flight.holding(self.stream, entries):
            outcomes: dict[bytes, Outcome] = {}
            good: list[tuple[Entry, T]] = []
            for index, entry in enumerate(entries):
                count = deliveries[index] if deliveries else 1
                if count > settings.max_deliveries:
                    reason = stage.failures.give_up_reason(entry.id, count)
                    outcomes[entry.id] = PermanentError(reason)
                    continue
                try:
                    event = wire.decode(
                        self.adapter, entry.fields, max_bytes=settings.max_payload_bytes
                    )
                except PermanentError as exc:
                    outcomes[entry.id] = exc
                else:
                    good.append((entry, event))
            early: dict[bytes, Outcome] = {}
            if good and self.deadline_of is not None:
                live = self._split_expired(good, outcomes)
                if len(live) < len(good):
                    # Past their deadline already: their clients are told now, not once the
                    # rest of the batch is handled (what else is settled goes with them).
                    early, outcomes = outcomes, {}
                    await stage.commit(self, entries, early, deliveries, spans)
                good = live
            counts = {e.id: deliveries[i] if deliveries else 1 for i, e in enumerate(entries)}
            settled = _EarlyCommits(
                self, [(e, ev, counts[e.id]) for e, ev in good], spans, bool(deliveries)
            )
            token = _early.set(settled)
            try:
                if good:
                    outcomes.update(await self._handle_isolating(good))
            finally:
                _early.reset(token)
            for entry_id in settled.done:  # committed already
                outcomes.pop(entry_id, None)
            try:
                await stage.commit(self, entries, outcomes, deliveries, spans)
            finally:
                tracing.end_spans(spans, {**early, **settled.done, **outcomes})
                metrics.handle_seconds.labels(*labels).observe(time.perf_counter() - started)

    def _split_expired(
        self, good: list[tuple[Entry, T]], outcomes: dict[bytes, Outcome]
    ) -> list[tuple[Entry, T]]:
        """Put the expired outcome of the events past their deadline in `outcomes`; the rest."""
        events = [event for _, event in good]
        settled: list[Outcome | None] = [None] * len(good)
        live = self._expire(events, settled, range(len(good)))
        for (entry, _), outcome in zip(good, settled, strict=True):
            if outcome is not None:
                outcomes[entry.id] = outcome
        return [good[i] for i in live]

    async def _handle_isolating(self, good: list[tuple[Entry, T]]) -> dict[bytes, Outcome]:
        """Handle the batch; if it raises, handle entry by entry so one poison entry cannot
        hold back the others. Entries whose handling failed get no outcome (stay pending)."""
        try:
            handled = await self._handle_with_retries([event for _, event in good])
        except Exception as exc:
            if len(good) == 1 and isinstance(exc, PermanentError):
                return {good[0][0].id: exc}  # raised for this entry alone: dead-letter it now
            if len(good) == 1:
                log.error(
                    "handling failed, entry left pending for redelivery",
                    entry_id=good[0][0].id.decode(), error=type(exc).__name__, exc_info=exc,
                )  # fmt: skip
                self.stage.failures.remember(good[0][0].id, exc)
                return {}
            log.warning(
                "batch failed, retrying entry by entry",
                stream=self.stream, entries=len(good), error=type(exc).__name__,
            )  # fmt: skip
            outcomes: dict[bytes, Outcome] = {}
            early = _early.get()
            for entry, event in good:
                if early is not None and early.outcome_of(event) is not None:
                    continue  # settled already (`settle_now`)
                outcomes.update(await self._handle_isolating([(entry, event)]))
            return outcomes
        return {
            entry.id: outcome
            for (entry, _), outcome in zip(good, handled, strict=True)
            if outcome is not None
        }

    async def _handle_with_retries(self, events: list[T]) -> list[Outcome | None]:
        """One outcome per event (None: left pending). Events past their deadline get
        `on_expired`'s; transient errors are retried for `transient_retry_s`, never past the
        earliest deadline of the events retried (see the module's docstring)."""
        outcomes: list[Outcome | None] = [None] * len(events)
        todo = self._expire(events, outcomes, range(len(events)))
        give_up = time.monotonic() + self.stage.settings.transient_retry_s
        delay = 0.1
        while todo:
            try:
                handled = await self.handle([events[i] for i in todo])
            except TransientError as exc:
                wait = delay
                first = self._earliest_deadline(events, todo)
                if first is not None:  # no sleeping (nor retrying) past a deadline
                    wait = max(0.0, min(wait, first - time.monotonic() + 0.001))
                if time.monotonic() + wait > give_up:
                    log.error("transient error, leaving entries pending", reason=str(exc))
                    return outcomes
                log.warning("transient error, retrying", reason=str(exc), delay_s=round(wait, 3))
                await asyncio.sleep(wait)
                delay = min(delay * 2, 5.0)
                todo = self._expire(events, outcomes, self._unsettled(events, outcomes, todo))
                continue
            if len(handled) != len(todo):
                raise RuntimeError(f"handler returned {len(handled)} outcomes for {len(todo)}")
            for index, outcome in zip(todo, handled, strict=True):
                outcomes[index] = outcome
            return outcomes
        return outcomes

    @staticmethod
    def _unsettled(
        events: Sequence[T], outcomes: list[Outcome | None], todo: Sequence[int]
    ) -> list[int]:
        """The events of `todo` not settled ahead of the batch (`settle_now`); those get their
        settled outcome."""
        early = _early.get()
        if early is None:
            return list(todo)
        left: list[int] = []
        for index in todo:
            outcome = early.outcome_of(events[index])
            if outcome is None:
                left.append(index)
            else:
                outcomes[index] = outcome
        return left

    def _expire(
        self, events: Sequence[T], outcomes: list[Outcome | None], todo: Sequence[int]
    ) -> list[int]:
        """Give the events of `todo` past their deadline their expired outcome; the rest."""
        if self.deadline_of is None:
            return list(todo)
        left: list[int] = []
        for index in todo:
            deadline = self.deadline_of(events[index])
            if not is_past(deadline):
                left.append(index)
                continue
            outcomes[index] = (
                self.on_expired(events[index])
                if self.on_expired is not None
                else PermanentError(f"deadline exceeded ({deadline:%Y-%m-%dT%H:%M:%S.%f} passed)")
            )
        if len(left) < len(todo):
            expired = len(todo) - len(left)
            log.info("deadline exceeded, not handled", stream=self.stream, events=expired)
        return left

    def _earliest_deadline(self, events: Sequence[T], todo: Sequence[int]) -> float | None:
        """The earliest deadline of these events, on the monotonic clock; None if none has."""
        if self.deadline_of is None:
            return None
        deadlines = [d for i in todo if (d := self.deadline_of(events[i])) is not None]
        return min(monotonic_of(d) for d in deadlines) if deadlines else None
