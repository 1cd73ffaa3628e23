"""XADD one event, inside a producer span whose trace context travels in the entry."""

from pydantic import BaseModel
from redis.asyncio import Redis

from shared import tracing, wire


async def publish(
    redis: Redis, stream: str, event: BaseModel, *, maxlen: int, span: str, **attributes: str
) -> None:
    """`maxlen` is `StreamSettings.maxlen`: 0 (the default) never trims, like the stages."""
    with tracing.client_span(span, **attributes):
        fields = wire.encode(event)
        tracing.inject(fields)
        if maxlen:
            await redis.xadd(stream, fields, maxlen=maxlen, approximate=True)
        else:
            await redis.xadd(stream, fields)
