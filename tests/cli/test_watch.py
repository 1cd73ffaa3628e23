"""`ragstream watch DIR`: file changes become doc events (a rename: a delete plus an upsert);
one real run against chunker and embedder processes, stopped with Ctrl-C."""

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ragstream.allinone import STAGES, running
from ragstream.redis_server import RedisServer
from ragstream.sync import SyncResult, SyncState
from ragstream.watch import watch
from shared import doc_state
from shared.client import ask
from shared.contracts import DocDelete, DocUpsert
from shared.settings import StoreSettings, StreamSettings, store_env
from tests.cli.fake_index import FakeIndex, cli_env, fake_index
from tests.conftest import stream_env, unique_streams


async def wait_for(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


class Watching:
    def __init__(self, index: FakeIndex, results: list[SyncResult]) -> None:
        self.index, self.results = index, results

    def kinds(self) -> list[tuple[str, str]]:
        return [(e.type, e.doc_id) for e in self.index.events]


@pytest.fixture
async def watching(
    redis: Redis, streams: StreamSettings, tmp_path: Path
) -> AsyncIterator[Watching]:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "old.md").write_text("# Old\n\nThere before the watch.\n")
    stop, ready = asyncio.Event(), asyncio.Event()
    results: list[SyncResult] = []
    async with fake_index(redis, streams) as index:
        watcher = watch(
            redis, folder, SyncState(tmp_path / "state.json"), on_result=results.append,
            stop=stop, streams=streams, timeout_s=10, on_ready=ready.set,
        )  # fmt: skip
        task = asyncio.create_task(watcher)
        await asyncio.wait_for(ready.wait(), 10)
        yield Watching(index, results)
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_changes_become_events(watching: Watching, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    assert watching.kinds() == [("upsert", "old.md")]  # the first sync, before watching

    (folder / "new.md").write_text("# New\n\nFirst words.\n")
    await wait_for(lambda: len(watching.index.events) == 2)
    created = watching.index.events[1]
    assert isinstance(created, DocUpsert) and (created.doc_id, created.title) == ("new.md", "New")

    (folder / "new.md").write_text("# New\n\nSecond words.\n")
    await wait_for(lambda: len(watching.index.events) == 3)
    modified = watching.index.events[2]
    assert isinstance(modified, DocUpsert) and "Second words" in modified.text
    assert modified.version > created.version

    (folder / "new.md").rename(folder / "renamed.md")
    await wait_for(lambda: len(watching.index.events) == 5)
    assert sorted(watching.kinds()[3:]) == [("delete", "new.md"), ("upsert", "renamed.md")]
    delete = next(e for e in watching.index.events[3:] if isinstance(e, DocDelete))
    assert delete.version > modified.version

    (folder / "old.md").unlink()
    (folder / "ignored.json").write_text("{}")
    await wait_for(lambda: len(watching.index.events) == 6)
    assert watching.kinds()[5] == ("delete", "old.md")
    await asyncio.sleep(0.5)
    assert len(watching.index.events) == 6  # nothing more: no duplicate, the .json ignored
    assert all(r.settled for r in watching.results)


async def test_touch_without_change_sends_nothing(watching: Watching, tmp_path: Path) -> None:
    path = tmp_path / "docs" / "old.md"
    path.write_text(path.read_text())
    (tmp_path / "docs" / "sub").mkdir()
    (tmp_path / "docs" / "sub" / "deep.txt").write_text("Nested file.\n")
    await wait_for(lambda: len(watching.index.events) == 2)
    await asyncio.sleep(0.5)
    assert watching.kinds() == [("upsert", "old.md"), ("upsert", "sub/deep.txt")]


@pytest.fixture(scope="module")
def pipeline(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[StreamSettings, Path]]:
    """All five stages as real processes (one set for this module)."""
    streams = unique_streams()
    data_dir = tmp_path_factory.mktemp("watch")
    store = StoreSettings(backend="lancedb", lancedb_path=data_dir / "index")
    env = {**stream_env(streams), **store_env(store)}
    with running(data_dir, redis_server.url, STAGES, env, streams):
        yield streams, data_dir


@pytest.mark.integration
async def test_watch_end_to_end_and_ctrl_c(
    redis: Redis, redis_server: RedisServer, pipeline: tuple[StreamSettings, Path],
    tmp_path: Path,
) -> None:  # fmt: skip
    streams, _ = pipeline
    folder = tmp_path / "docs-folder"
    folder.mkdir()
    env = cli_env(redis_server.url, streams, tmp_path / "data")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ragstream", "--log-format", "json", "watch", str(folder), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    events: list[dict[str, object]] = []

    async def until(event: str, doc_id: str | None = None) -> dict[str, object]:
        while True:
            line = await asyncio.wait_for(process.stderr.readline(), 30)  # type: ignore[union-attr]
            assert line, f"watch exited: {events}"
            events.append(json.loads(line))
            if events[-1]["event"] == event and doc_id in (None, events[-1].get("doc_id")):
                return events[-1]

    try:
        await until("watching")
        (folder / "mars.md").write_text("# Mars\n\nPhobos and Deimos were found by Asaph Hall.\n")
        saved = time.monotonic()
        indexed = await until("doc indexed", "mars.md")
        took = time.monotonic() - saved
        state = await doc_state.read(redis, streams.indexed, "mars.md")
        assert state is not None and state.version == indexed["version"] and not state.deleted
        assert took < 5, took
        # the README's demo: the next ask cites the saved text
        answer = await ask(redis, "Who found the moons of Mars?", streams=streams, timeout=30)
        answered = time.monotonic() - saved
        assert [c.doc_id for c in answer.citations][:1] == ["mars.md"], answer
        assert "Asaph Hall" in answer.text
        print(f"saved → indexed {took * 1000:.0f} ms, → answer citing it {answered * 1000:.0f} ms")

        (folder / "mars.md").unlink()
        deleted = await until("doc deleted", "mars.md")
        assert isinstance(deleted["version"], int) and isinstance(indexed["version"], int)
        assert deleted["version"] > indexed["version"]
        state = await doc_state.read(redis, streams.indexed, "mars.md")
        assert state is not None and state.deleted

        process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(process.wait(), 20)
        rest = await process.stderr.read()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0, rest
    assert b"Traceback" not in rest
    assert json.loads(rest.splitlines()[-1])["event"] == "stopped"


def test_watch_needs_a_folder(redis_server: RedisServer, tmp_path: Path) -> None:
    env = cli_env(redis_server.url, unique_streams(), tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "ragstream", "--log-format", "json", "watch", str(tmp_path / "no")],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert json.loads(result.stderr)["event"] == "not a folder"
