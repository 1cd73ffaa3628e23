"""Acting as the chunker + embedder in a test: read the docs stream, ack each event on the
indexed stream the way the embedder does (versioned: an older version is `stale`)."""

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from redis.asyncio import Redis

from shared import wire
from shared.contracts import DOC_EVENT, DocDelete, DocIndexed, DocUpsert, IndexOutcome
from shared.contracts.base import utcnow
from shared.logging import FORMAT_ENV
from shared.settings import StreamSettings
from tests.conftest import stream_env


@dataclass
class FakeIndex:
    redis: Redis
    streams: StreamSettings
    events: list[DocUpsert | DocDelete] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self) -> None:
        cursor: bytes | str = "0-0"
        while not self.stop.is_set():
            response = await self.redis.xread({self.streams.docs: cursor}, block=100, count=100)
            for _, entries in wire.read_entries(response or []):
                for entry_id, fields in entries:
                    cursor = entry_id
                    await self.ack(DOC_EVENT.validate_json(wire.payload_of(fields)))

    async def ack(self, event: DocUpsert | DocDelete) -> None:
        self.events.append(event)
        if event.version < self.versions.get(event.doc_id, -1):
            outcome = IndexOutcome.STALE
        else:
            self.versions[event.doc_id] = event.version
            deleted = isinstance(event, DocDelete)
            outcome = IndexOutcome.DELETED if deleted else IndexOutcome.INDEXED
        ack = DocIndexed(
            doc_id=event.doc_id, version=event.version, outcome=outcome, n_chunks=1,
            doc_emitted_at=event.emitted_at, indexed_at=utcnow(),
        )  # fmt: skip
        await self.redis.xadd(self.streams.indexed, wire.encode(ack))


@contextlib.asynccontextmanager
async def fake_index(redis: Redis, streams: StreamSettings) -> AsyncIterator[FakeIndex]:
    index = FakeIndex(redis, streams)
    task = asyncio.create_task(index.serve())
    try:
        yield index
    finally:
        # A flag, not only a cancel: a cancel landing in redis-py's blocking read can be
        # swallowed there (Python 3.11), and awaiting the task would then hang.
        index.stop.set()
        _, late = await asyncio.wait({task}, timeout=5)
        for straggler in late:
            straggler.cancel()


def cli_env(url: str, streams: StreamSettings, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FORMAT_ENV}
    return {
        **env, **stream_env(streams), "RAG_REDIS_URL": url, "RAGSTREAM_DATA_DIR": str(data_dir),
    }  # fmt: skip


async def run_cli(env: dict[str, str], *args: str, timeout_s: float = 60) -> tuple[int, str, str]:
    """`python -m ragstream --log-format json ARGS`: exit code, stdout, stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ragstream", "--log-format", "json", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
