"""`ragstream up --store weaviate` as a user runs it: a local Weaviate built from source, all
five stages on it, a document in, an answer citing it out; SIGTERM stops everything, server too."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ragstream.ingest import publish_and_wait
from ragstream.redis_server import RedisServer
from shared.client import ask
from shared.contracts import Answer, DocUpsert
from shared.settings import StreamSettings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _answering(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v1/.well-known/live", timeout=1):
            return True
    except (urllib.error.URLError, OSError):
        return False


async def ingest_and_ask(redis_url: str) -> Answer:
    redis = Redis.from_url(redis_url)
    try:
        doc = DocUpsert(
            doc_id="okapi", version=1, title="Okapi",
            text="The okapi is a giraffid native to the Congo rainforest.",
        )  # fmt: skip
        report = await publish_and_wait(redis, [doc], streams=StreamSettings(), timeout_s=60)
        assert report.outcomes == {("okapi", 1): "indexed"}
        return await ask(redis, "Where does the okapi live?", timeout=60)
    finally:
        await redis.aclose()


def _event(line: str) -> dict[str, object]:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def test_up_with_weaviate_ingests_answers_and_stops_cleanly(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "RAGSTREAM_DATA_DIR": str(tmp_path / "data"),
        "RAG_REDIS_URL": redis_server.url,
        "HF_HUB_OFFLINE": "1",
    }
    for name in ("WEAVIATE_URL", "RAG_STORE_WEAVIATE_URL", "RAG_STORE_BACKEND"):
        env.pop(name, None)
    up = subprocess.Popen(
        [sys.executable, "-m", "ragstream", "up", "--store", "weaviate"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert up.stderr is not None
    weaviate_url = None
    lines: list[str] = []
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            line = up.stderr.readline()
            assert line or up.poll() is None, "".join(lines[-30:])
            lines.append(line)
            event = _event(line)  # off a terminal, `up` says what it does as JSON log events
            if event.get("event") == "weaviate ready":
                weaviate_url = str(event["url"])
            if event.get("event") == "up":
                break
        else:
            pytest.fail("ragstream up did not become ready: " + "".join(lines[-30:]))
        assert weaviate_url is not None and _answering(weaviate_url)

        answer = asyncio.run(ingest_and_ask(redis_server.url))
        assert answer.error is None and not answer.abstained
        assert [c.doc_id for c in answer.citations] == ["okapi"]
    finally:
        up.send_signal(signal.SIGTERM)
        code = up.wait(90)
    assert code == 0
    assert weaviate_url is not None and not _answering(weaviate_url)  # the server stopped too
