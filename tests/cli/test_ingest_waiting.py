"""`ragstream ingest` while it waits for the acks: telling that no stage is reading, and riding
out a Redis restart (real server with AOF, real chunker and embedder processes)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from ragstream.allinone import running
from ragstream.redis_server import RedisServer, start_server
from shared.logging import FORMAT_ENV
from shared.readiness import ready_key
from shared.settings import StoreSettings, StreamSettings, store_env
from tests.conftest import stream_env, unique_streams

DOCS = 6
DOWN_S = 8.0
"""Longer than redis-py's own retries of a command: the CLI's reconnecting is what is tested."""


def write_docs(folder: Path, n: int = DOCS) -> Path:
    folder.mkdir()
    for i in range(n):
        (folder / f"doc-{i}.md").write_text(f"# Doc {i}\n\nFact number {i} about restarts.\n")
    return folder


def ingest_command(folder: Path, timeout_s: float, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ragstream",
        *options,
        "ingest",
        str(folder),
        "--timeout",
        str(timeout_s),
    ]


def cli_env(url: str, streams: StreamSettings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FORMAT_ENV}
    return {**env, **stream_env(streams), "RAG_REDIS_URL": url}


def test_no_chunker_reading_is_told_once(
    redis_server: RedisServer, streams: StreamSettings, tmp_path: Path
) -> None:
    result = subprocess.run(
        ingest_command(write_docs(tmp_path / "docs", 2), 6, "--log-format", "console"),
        env=cli_env(redis_server.url, streams), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    line = f"! no chunker is reading {streams.docs}: start the stages with `ragstream up`"
    assert result.stderr.splitlines().count(line) == 1, result.stderr
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("✗ timed out after 6 s: 0 of 2 docs")
    assert "Traceback" not in result.stderr


def test_nothing_is_told_while_the_stages_read(
    redis_server: RedisServer, streams: StreamSettings, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    for stage, stream in (("chunker", streams.docs), ("embedder", streams.chunks)):
        client.set(ready_key(stream, stage, "c1"), "1", px=60_000)  # as a running stage does
    client.close()
    result = subprocess.run(
        ingest_command(write_docs(tmp_path / "docs", 1), 5, "--log-format", "console"),
        env=cli_env(redis_server.url, streams), capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert "is reading" not in result.stderr
    assert result.returncode == 1  # nobody really indexes here


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ingest_survives_a_redis_restart_while_it_waits(tmp_path: Path) -> None:
    streams = unique_streams()
    server = start_server(tmp_path / "redis", appendfsync="always")
    port = server.port
    ingest = subprocess.Popen(
        ingest_command(write_docs(tmp_path / "docs"), 300), env=cli_env(server.url, streams),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        client = redis.Redis.from_url(server.url)
        deadline = time.monotonic() + 60
        while client.xlen(streams.docs) < DOCS:  # published: ingest is now waiting for acks
            assert time.monotonic() < deadline and ingest.poll() is None
            time.sleep(0.1)
        client.close()
        server.kill()
        time.sleep(DOWN_S)
        server = start_server(tmp_path / "redis", port=port, appendfsync="always")
        store = StoreSettings(backend="lancedb", lancedb_path=tmp_path / "index")
        env = {**stream_env(streams), **store_env(store)}
        with running(tmp_path / "stages", server.url, ("chunker", "embedder"), env, streams):
            out, err = ingest.communicate(timeout=300)
    finally:
        if ingest.poll() is None:
            ingest.kill()
        server.stop()
    assert ingest.returncode == 0, err
    events = [json.loads(line)["event"] for line in err.splitlines()]
    assert events.index("redis connection lost") < events.index("redis reconnected"), err
    assert "Traceback" not in err
    summary = json.loads(out)
    assert (summary["docs"], summary["indexed"]) == (DOCS, DOCS)
