"""Fixtures shared by every test: a real Redis server of our own, unique stream names."""

import argparse
import io
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from rich.console import Console

from ragstream.redis_server import RedisServer, start_server
from ragstream.weaviate_server import WeaviateServer, WeaviateUnavailable, start_weaviate
from shared.settings import StoreSettings, StreamSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A server this test run owns, on a free port (no AOF: these tests don't restart it)."""
    server = start_server(tmp_path_factory.mktemp("redis"), appendonly=False)
    yield server
    server.stop()


@pytest.fixture(scope="session", autouse=True)
def default_onnx_export() -> None:
    """The export the default embedding backend (ONNX int8) reads, made where `make install`
    makes it if it is missing (`RAG_EMBEDDING_ONNX_PATH` set: that one is used)."""
    from ragstream.onnx_export import run_export
    from shared.onnx_models import MANIFEST_FILE, default_export_dir

    if os.environ.get("RAG_EMBEDDING_ONNX_PATH"):
        return
    out = default_export_dir(None)
    if (out / MANIFEST_FILE).is_file():
        return
    args = argparse.Namespace(model=None, out=str(out), int8=True, cross_encoder=False)
    assert run_export(args, Console(file=io.StringIO()), Console(file=io.StringIO())) == 0


@pytest.fixture(scope="session")
def onnx_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ragstream export-onnx --int8` of the packaged model, once per test run (fp32 + int8)."""
    from ragstream.onnx_export import run_export

    out = tmp_path_factory.mktemp("onnx") / "all-MiniLM-L6-v2"
    args = argparse.Namespace(model=None, out=str(out), int8=True, cross_encoder=False)
    stdout = io.StringIO()
    code = run_export(args, Console(file=stdout), Console(file=io.StringIO()))
    assert code == 0, stdout.getvalue()
    summary = json.loads(stdout.getvalue())
    assert summary["out"] == str(out) and summary["precisions"] == ["fp32", "int8"]
    return out


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


@pytest.fixture(scope="session")
def weaviate_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeaviateServer]:
    """A real Weaviate this test run owns (built from its Go module once, see `make weaviate`).

    A Weaviate that cannot be built or started fails the tests that need it: never a skip.
    """
    try:
        server = start_weaviate(tmp_path_factory.mktemp("weaviate"))
    except WeaviateUnavailable as exc:
        pytest.fail(f"Weaviate is required for this test and could not start: {exc}")
    yield server
    server.stop()


BACKENDS = ("lancedb", "weaviate")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> StoreSettings:
    return fresh_index(backend, tmp_path, request)


def fresh_index(backend: str, data_dir: Path, request: pytest.FixtureRequest) -> StoreSettings:
    """Settings of a fresh, empty index of `backend` (its own table or collection; a LanceDB
    one under `data_dir`)."""
    table = f"t{uuid.uuid4().hex[:12]}"
    if backend == "lancedb":
        return StoreSettings(backend="lancedb", lancedb_path=data_dir / "index", table=table)
    server: WeaviateServer = request.getfixturevalue("weaviate_server")
    return StoreSettings(
        backend="weaviate",
        weaviate_url=server.url,
        weaviate_grpc_port=server.ports.grpc,
        table=table,
    )
