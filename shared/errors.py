"""The exception tree every stage uses to decide: retry, or dead-letter."""

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_DOWN = (RedisConnectionError, RedisTimeoutError)
"""What redis-py raises while Redis is unreachable: wait and retry, never dead-letter."""


class RagStreamError(Exception):
    """Base of every error ragstream raises on purpose."""


class TransientError(RagStreamError):
    """Worth retrying: the store or a provider is unavailable. The entry stays pending."""


class PermanentError(RagStreamError):
    """Retrying cannot help: bad input. The entry is dead-lettered with this reason and acked."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
