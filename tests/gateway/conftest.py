"""The gateway over real HTTP: in-process (uvicorn on a free port, in the test's event loop) or
as its own process, against the session's Redis; the five stages for end-to-end tests."""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from ragstream.allinone import STAGES, running
from ragstream.redis_server import RedisServer, free_port
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from shared.settings import RedisSettings, StreamSettings
from tests.conftest import stream_env, unique_streams

REPO = Path(__file__).resolve().parents[2]
API_KEY = "gw-test-key-3f9c1e"
AUTH = {"X-API-Key": API_KEY}


def make_app(redis_url: str, streams: StreamSettings, **settings: Any) -> FastAPI:
    return create_app(
        GatewaySettings(**settings),
        RedisSettings.model_validate({"RAG_REDIS_URL": redis_url}),
        streams,
    )


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free port in this event loop; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("uvicorn exited during start-up")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(30)


def start_gateway(command: list[str], env: dict[str, str], port: int, log: Path) -> GatewayProcess:
    """Run the gateway as a process (`command` after `python`, stderr to `log`) and wait until
    its /readyz is 200."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, *command], cwd=REPO, stderr=stderr,
            env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
    gateway = GatewayProcess(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"gateway exited with code {process.returncode}"
        try:
            if httpx.get(f"{gateway.url}/readyz", timeout=2).status_code == 200:
                return gateway
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    gateway.stop()
    raise TimeoutError("gateway not ready after 60 s")


def gateway_env(redis_url: str, streams: StreamSettings, **settings: str) -> dict[str, str]:
    return {
        **stream_env(streams),
        "RAG_REDIS_URL": redis_url,
        **{f"RAG_GATEWAY_{name.upper()}": value for name, value in settings.items()},
    }


@dataclass
class Stack:
    """All five stages and the gateway (started with the documented uvicorn command)."""

    streams: StreamSettings
    url: str


@pytest.fixture(scope="package")
def stack(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    streams = unique_streams()
    data_dir = tmp_path_factory.mktemp("gateway-stack")
    env = {**stream_env(streams), "RAG_STORE_LANCEDB_PATH": str(data_dir / "index")}
    with running(data_dir, redis_server.url, STAGES, env, streams):
        port = free_port()
        command = ["-m", "uvicorn", "services.gateway.app:app"]
        command += ["--host", "127.0.0.1", "--port", str(port)]
        env = gateway_env(redis_server.url, streams, api_keys=API_KEY)
        gateway = start_gateway(command, env, port, data_dir / "gateway.log")
        try:
            yield Stack(streams, gateway.url)
        finally:
            gateway.stop()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, headers=AUTH, timeout=60) as http:
        yield http


def sse_events(body: str) -> list[tuple[str, str]]:
    """(event, data) of each event in an SSE body; comments (keep-alives) are skipped."""
    events = []
    for block in body.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith(":")
        )
        if fields:
            events.append((fields.get("event", "message"), fields.get("data", "")))
    return events
