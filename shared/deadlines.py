"""Client deadlines (`Query.deadline`): wall-clock instants shared across processes.

A deadline is an absolute UTC time, set by the client (`now + timeout`); stages compare it with
their own clock, so clock skew between hosts shifts it by that much (NTP keeps it to ms).
A deadline without a timezone is read as UTC.
"""

import time
from datetime import UTC, datetime, timedelta

from shared.contracts.base import utcnow


def deadline_after(timeout_s: float) -> datetime:
    """The deadline of a request that waits `timeout_s` seconds from now."""
    return utcnow() + timedelta(seconds=timeout_s)


def seconds_left(deadline: datetime) -> float:
    """Seconds until `deadline`; zero or negative once it has passed."""
    if deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=UTC)
    return (deadline - utcnow()).total_seconds()


def is_past(deadline: datetime | None) -> bool:
    return deadline is not None and seconds_left(deadline) <= 0


def monotonic_of(deadline: datetime) -> float:
    """`deadline` on the `time.monotonic()` clock of this process (for timeouts and sleeps)."""
    return time.monotonic() + seconds_left(deadline)


def exceeded_reason(deadline: datetime, stage: str) -> str:
    """The error an Answer carries when `stage` gave up on a query at its deadline."""
    late_ms = max(0.0, -seconds_left(deadline) * 1000)
    return f"deadline exceeded at the {stage} ({late_ms:.0f} ms past the query's deadline)"
