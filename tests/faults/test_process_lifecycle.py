"""Stage processes: graceful SIGTERM mid-batch, and a password-protected server whose password
comes from a secret file."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from bench.reliability.faulty import SLOW
from ragstream.redis_server import RedisServer, free_port, start_server
from shared import wire
from shared.contracts import DocUpsert
from shared.readiness import ready_consumers
from shared.settings import StreamSettings
from tests.conftest import stream_env

pytestmark = pytest.mark.integration


def start_chunker(
    url: str, streams: StreamSettings, log: Path, http_port: int = 0, **env: str
) -> "subprocess.Popen[bytes]":
    with log.open("wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.reliability.faulty", "chunker"],
            env={
                **os.environ,
                **stream_env(streams),
                "RAG_REDIS_URL": url,
                "POD_NAME": "solo",
                "RAG_CHUNKER_HTTP_PORT": str(http_port),
                **env,
            },
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


async def wait_for(condition, within_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_sigterm_mid_batch_finishes_acks_and_exits_0(
    redis_server: RedisServer, redis: Redis, streams: StreamSettings, tmp_path: Path
) -> None:
    """Also the probes of a real stage process: live and ready while it runs, not ready (but
    still live) while it drains after SIGTERM."""
    port = free_port()
    chunker = start_chunker(
        redis_server.url,
        streams,
        tmp_path / "chunker.log",
        http_port=port,
        RAG_FAULT_SLOW_S="3",
        RAG_CHUNKER_GRACE_S="20",
    )
    probes = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2.0)
    try:
        await wait_for(lambda: _has_consumer(redis, streams.docs))
        assert (await probes.get("/livez")).status_code == 200
        ready = await probes.get("/readyz")
        assert ready.status_code == 200, ready.text
        await redis.xadd(
            streams.docs, wire.encode(DocUpsert(doc_id=f"{SLOW}1", version=1, text="Slow doc."))
        )

        async def in_flight() -> bool:
            return int((await redis.xpending(streams.docs, "chunker"))["pending"]) == 1

        await wait_for(in_flight)
        chunker.send_signal(signal.SIGTERM)
        started = time.monotonic()

        async def draining() -> bool:
            response = await probes.get("/readyz")
            return response.status_code == 503 and "draining" in response.text

        await wait_for(draining, within_s=2.5)  # the slow batch holds the drain for 3 s
        assert (await probes.get("/livez")).status_code == 200
        code = await asyncio.to_thread(chunker.wait, 30)
        assert code == 0, (tmp_path / "chunker.log").read_text()[-3000:]
        assert time.monotonic() - started < 20
        assert int((await redis.xpending(streams.docs, "chunker"))["pending"]) == 0
        assert await redis.xlen(streams.chunks) == 1  # the in-flight doc was finished and handed on
    finally:
        await probes.aclose()
        if chunker.poll() is None:
            chunker.kill()


async def _has_consumer(redis: Redis, stream: str) -> bool:
    return bool(await ready_consumers(redis, stream, "chunker"))


async def test_password_protected_server_with_password_from_secret_file(
    streams: StreamSettings, tmp_path: Path
) -> None:
    password = "s3cret-" + os.urandom(4).hex()
    server = start_server(tmp_path / "redis", appendonly=False, requirepass=password)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "rag_redis_password").write_text(password + "\n")
    log = tmp_path / "chunker.log"
    chunker = start_chunker(server.url, streams, log, RAG_SECRETS_DIR=str(secrets))
    redis = Redis.from_url(server.url, password=password)
    try:
        assert not await _denied_without_password(server.url)
        await wait_for(lambda: _has_consumer(redis, streams.docs))
        await redis.xadd(
            streams.docs, wire.encode(DocUpsert(doc_id="p1", version=1, text="Hello."))
        )

        async def chunked() -> bool:
            return bool(await redis.xlen(streams.chunks))

        await wait_for(chunked)
    finally:
        chunker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(chunker.wait, 30)
        await redis.aclose()
        server.stop()
    assert password not in log.read_text()  # never logged


async def _denied_without_password(url: str) -> bool:
    client = Redis.from_url(url)
    try:
        await client.ping()
        return True
    except Exception:
        return False
    finally:
        await client.aclose()
