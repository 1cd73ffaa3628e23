"""What a stage hands around while delivering entries: entries, outcomes, the bookkeeping of
redelivery (which entries are in flight, which of them a sibling took over, why an entry failed
before), and the opt-in to exclusive work per key (`Exclusive`)."""

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

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


@dataclass(frozen=True, slots=True)
class Exclusive(Generic[T]):
    """Opt-in for one subscription (`Stage.subscribe(..., exclusive=...)`): work is done once
    per key, e.g. one Answer per query.

    - At most one consumer at a time works on a `key`: it holds a lease on it (renewed by the
      heartbeat, released by its commit). An entry whose key a live sibling holds is left
      pending; once the holder is gone its lease expires and a reclaimer takes over.
    - The outputs of one entry per `request` are published; a later entry of an answered
      request is acked without outputs (for `ttl_s`).
    - Outputs published while handling (`Stage.publish`, e.g. streamed deltas) that belong to
      a key (`streamed_key`) go out only from the handler of the first entry that streamed for
      the request, only until the request is answered, and only while this consumer works on
      the key; the others are dropped.
    """

    key: Callable[[T], str]
    """The work an input event asks for (e.g. its query id)."""
    streamed_key: Callable[[BaseModel], str | None]
    """The key an output published while handling belongs to (e.g. an AnswerDelta's query id);
    None: not fenced, published as it is."""
    request: Callable[[T], str] | None = None
    """Which request for the key an event is (e.g. the query event's id: a regenerated query is
    a new request under the same query id); None: one request per key."""
    ttl_s: float = 3600.0
    """How long an answered request, and who streamed its outputs, are remembered."""


class InFlight:
    """Entries being handled right now, per stream (the same entry may be in two batches), and
    those of them that a sibling consumer took over meanwhile (`lost`)."""

    def __init__(self) -> None:
        self._held: dict[str, dict[bytes, int]] = {}
        self._lost: dict[str, set[bytes]] = {}

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
                    self._lost.get(stream, set()).discard(entry.id)

    def by_stream(self) -> dict[str, list[bytes]]:
        """The entries the heartbeat keeps: in flight and still this consumer's."""
        found: dict[str, list[bytes]] = {}
        for stream, held in self._held.items():
            lost = self._lost.get(stream, set())
            ids = [i for i in held if i not in lost]
            if ids:
                found[stream] = ids
        return found

    def holds(self, stream: str, entry_id: bytes) -> bool:
        return entry_id in self._held.get(stream, {})

    def lose(self, stream: str, entry_ids: Sequence[bytes]) -> list[bytes]:
        """Mark entries a sibling took over (the heartbeat leaves them alone); returns those
        not marked before."""
        held = self._held.get(stream, {})
        lost = self._lost.setdefault(stream, set())
        new = [i for i in entry_ids if i in held and i not in lost]
        lost.update(new)
        return new

    def regain(self, stream: str, entry_ids: Sequence[bytes]) -> None:
        """Entries this consumer claimed back (its reclaim loop): the heartbeat keeps them."""
        lost = self._lost.get(stream)
        if lost:
            lost.difference_update(entry_ids)


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
