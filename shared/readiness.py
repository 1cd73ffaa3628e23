"""Which stage processes are up and reading, told by Redis keys they renew themselves.

A stage announces each (input stream, group, consumer) it reads with a key that expires unless
renewed (`SET … PX`), from the moment its subscribers run until it starts draining on SIGTERM.
This works the same on every Redis version: `XINFO CONSUMERS` does not, since Redis 7.0 lists
no consumer for a group whose consumers only ever blocked on an empty stream.
"""

from redis.asyncio import Redis

PREFIX = "ragstream:ready"


def ready_key(stream: str, group: str, consumer: str) -> str:
    return f"{PREFIX}:{stream}:{group}:{consumer}"


def ready_pattern(stream: str, group: str) -> str:
    """The SCAN pattern of every announced consumer of `group` on `stream`."""
    return f"{_glob_escape(ready_key(stream, group, ''))}*"


async def ready_consumers(redis: Redis, stream: str, group: str) -> set[str]:
    """Consumers of `group` on `stream` that are up and reading now."""
    prefix = ready_key(stream, group, "")
    names: set[str] = set()
    async for key in redis.scan_iter(match=ready_pattern(stream, group), count=1000):
        text = key.decode() if isinstance(key, bytes) else str(key)
        names.add(text.removeprefix(prefix))
    return names


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
