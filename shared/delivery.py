"""What a stage hands around while delivering entries: entries, outcomes, and the bookkeeping
of redelivery (which entries are in flight, why an entry failed before)."""

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel

from shared.errors import PermanentError

T = TypeVar("T")
MAX_REMEMBERED_ERRORS = 10_000


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


class InFlight:
    """Entries being handled right now, per stream (the same entry may be in two batches)."""

    def __init__(self) -> None:
        self._held: dict[str, dict[bytes, int]] = {}

    @contextmanager
    def holding(self, stream: str, entries: Sequence[Entry]) -> Iterator[None]:
        held = self._held.setdefault(stream, {})
        for entry in entries:
            held[entry.id] = held.get(entry.id, 0) + 1
        try:
            yield
        finally:
            for entry in entries:
                count = held.get(entry.id, 0) - 1
                if count > 0:
                    held[entry.id] = count
                else:
                    held.pop(entry.id, None)

    def by_stream(self) -> dict[str, list[bytes]]:
        return {stream: list(held) for stream, held in self._held.items() if held}


class Failures:
    """Why entries failed in this process (error type only), for the dead letter's reason."""

    def __init__(self, max_deliveries: int) -> None:
        self.max_deliveries = max_deliveries
        self._errors: OrderedDict[bytes, str] = OrderedDict()

    def remember(self, entry_id: bytes, exc: Exception) -> None:
        self._errors[entry_id] = type(exc).__name__
        self._errors.move_to_end(entry_id)
        while len(self._errors) > MAX_REMEMBERED_ERRORS:
            self._errors.popitem(last=False)

    def forget(self, entry_ids: Sequence[bytes]) -> None:
        for entry_id in entry_ids:
            self._errors.pop(entry_id, None)

    def give_up_reason(self, entry_id: bytes, count: int) -> str:
        reason = f"gave up after {count - 1} deliveries (max_deliveries={self.max_deliveries})"
        error = self._errors.get(entry_id)
        return f"{reason}; last error: {error}" if error else reason
