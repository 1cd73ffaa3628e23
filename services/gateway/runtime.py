"""What one gateway replica holds while it runs: its Redis client, its reply stream and router,
the version clock, and whether it is draining."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, cast
from uuid import uuid4

from fastapi import Depends, FastAPI, Request
from redis.exceptions import RedisError

from services.gateway.documents import VersionClock
from services.gateway.replies import ReplyRouter
from services.gateway.settings import GatewaySettings
from shared.logging import get_logger
from shared.settings import RedisSettings, StreamSettings
from shared.stage import redis_client

PING_TIMEOUT_S = 2.0
log = get_logger("ragstream.gateway")


class Gateway:
    def __init__(
        self, settings: GatewaySettings, redis_settings: RedisSettings, streams: StreamSettings
    ) -> None:
        self.settings = settings
        self.streams = streams
        self.redis = redis_client(redis_settings)
        reply_stream = f"{streams.answers}.gw.{uuid4().hex}"
        self.replies = ReplyRouter(self.redis, reply_stream, settings.reply_idle_ttl_s)
        self.clock = VersionClock()
        self.draining = False

    def timeout_for(self, requested_s: float | None) -> float:
        return min(requested_s or self.settings.query_timeout_s, self.settings.max_query_timeout_s)

    async def problems(self) -> list[str]:
        """Why this replica should get no traffic now (empty: ready)."""
        problems = ["draining"] if self.draining else []
        if not self.replies.running:
            problems.append("reply reader is not running")
        try:
            async with asyncio.timeout(PING_TIMEOUT_S):
                await self.redis.ping()
        except (RedisError, TimeoutError) as exc:
            problems.append(f"redis: {type(exc).__name__}")
        return problems

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.replies.start()
        log.info("gateway started", reply_stream=self.replies.stream)
        try:
            yield
        finally:
            self.draining = True
            await self.replies.stop()
            await self.redis.aclose()
            log.info("gateway stopped")


def current_gateway(request: Request) -> Gateway:
    return cast(Gateway, request.app.state.gateway)


GatewayDep = Annotated[Gateway, Depends(current_gateway)]
