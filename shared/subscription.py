"""One input stream of a stage: decode its entries, handle them, commit the outcomes.

An exception fails the batch; it is then handled entry by entry so that one poison entry cannot
hold back the others. An entry whose handling alone raises a `PermanentError` (a store that
refuses what it holds, say) is dead-lettered at once with that reason; one whose handling raised
anything else is left pending, to be redelivered by the reclaim loop until `max_deliveries`
dead-letters it. Transient errors are
retried in-process with backoff for `transient_retry_s`, which counts no delivery.
"""

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

import structlog
from pydantic import TypeAdapter

from shared import metrics, tracing, wire
from shared.delivery import BatchHandler, Entry, Outcome, RejectHook
from shared.errors import PermanentError, TransientError

if TYPE_CHECKING:
    from shared.stage import Stage

T = TypeVar("T")
log = structlog.get_logger("ragstream.stage")


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
            if good:
                outcomes.update(await self._handle_isolating(good))
            try:
                await stage.commit(self, entries, outcomes, deliveries, spans)
            finally:
                tracing.end_spans(spans, outcomes)
                metrics.handle_seconds.labels(*labels).observe(time.perf_counter() - started)

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
            for entry, event in good:
                outcomes.update(await self._handle_isolating([(entry, event)]))
            return outcomes
        if handled is None:
            return {}
        return {entry.id: outcome for (entry, _), outcome in zip(good, handled, strict=True)}

    async def _handle_with_retries(self, events: list[T]) -> Sequence[Outcome] | None:
        deadline = time.monotonic() + self.stage.settings.transient_retry_s
        delay = 0.1
        while True:
            try:
                outcomes = await self.handle(events)
            except TransientError as exc:
                if time.monotonic() + delay > deadline:
                    log.error("transient error, leaving entries pending", reason=str(exc))
                    return None
                log.warning("transient error, retrying", reason=str(exc), delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            if len(outcomes) != len(events):
                raise RuntimeError(f"handler returned {len(outcomes)} outcomes for {len(events)}")
            return outcomes
