"""Fixtures shared by every test: a real Redis server of our own, unique stream names."""

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer, start_server
from shared.settings import StreamSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server this test run owns, on a free port (no AOF: these tests don't restart it)."""
    server = start_server(tmp_path_factory.mktemp("redis"), appendonly=False)
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def unique_streams() -> StreamSettings:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    return StreamSettings(
        docs=f"{prefix}.docs",
        chunks=f"{prefix}.chunks",
        indexed=f"{prefix}.indexed",
        queries=f"{prefix}.queries",
        retrieved=f"{prefix}.retrieved",
        reranked=f"{prefix}.reranked",
        answers=f"{prefix}.answers",
        dlq=f"{prefix}.dlq",
    )


@pytest.fixture
def streams() -> StreamSettings:
    return unique_streams()


def stream_env(streams: StreamSettings) -> dict[str, str]:
    """Env that points a stage process at these stream names."""
    return {
        f"RAG_STREAM_{name.upper()}": str(value) for name, value in streams.model_dump().items()
    }


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"
