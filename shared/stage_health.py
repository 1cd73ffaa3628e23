"""Health for `shared.stage.Stage`: why it is not ready (`/readyz`), the readiness keys
`ragstream up` and `ragstream status` look for, and the group's sampled lag and pending count."""

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from shared import metrics, wire
from shared.errors import REDIS_DOWN
from shared.ops_server import ReadinessCheck
from shared.readiness import ready_key
from shared.stage_settings import StageSettings

if TYPE_CHECKING:
    from shared.subscription import Subscription

log = structlog.get_logger("ragstream.stage")
READY_TTL_S = 15.0
"""A stage's readiness key expires this long after its last renewal (renewed every third)."""


class Health:
    """Readiness and group metrics (state set up by `Stage.__init__`)."""

    name: str
    settings: StageSettings
    group: str
    redis: Redis
    subscriptions: "list[Subscription[Any]]"
    _stopping: asyncio.Event
    _running: bool
    _readiness_checks: list[ReadinessCheck]

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
                    if not any(wire.text_of(g["name"]) == self.group for g in groups):
                        return [f"consumer group {self.group} is missing on {subscription.stream}"]
        except (*REDIS_DOWN, ResponseError, TimeoutError) as exc:
            return [f"redis: {exc or type(exc).__name__}"]
        problems: list[str] = []
        for check in self._readiness_checks:
            problems.extend(await check())
        return problems

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

    async def _sample_groups(self) -> None:
        """Export the group's lag and pending count per input stream (sampled, not counted)."""
        for subscription in self.subscriptions:
            try:
                groups = await self.redis.xinfo_groups(subscription.stream)
            except (*REDIS_DOWN, ResponseError) as exc:
                log.warning("group sampling failed", stream=subscription.stream, reason=str(exc))
                continue
            for group in groups:
                if wire.text_of(group["name"]) != self.group:
                    continue
                labels = (self.name, subscription.stream, self.group)
                metrics.group_pending.labels(*labels).set(int(group["pending"]))
                if group.get("lag") is not None:  # unknown after some trims (Redis docs)
                    metrics.group_lag.labels(*labels).set(int(group["lag"]))
