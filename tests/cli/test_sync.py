"""`ingest DIR --sync`: state per folder, nothing sent for unchanged files, a new version for a
changed one, a delete for a vanished one; the state is written only once acknowledged."""

import json
from pathlib import Path

from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from ragstream.sync import Entry, SyncState, default_state_path, plan, scan, sync
from shared.contracts import DocDelete, DocUpsert
from shared.settings import StreamSettings
from tests.cli.fake_index import cli_env, fake_index, run_cli


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def docs_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    write(folder, "a.md", "# Alpha\n\nThe aardvark eats ants.\n")
    write(folder, "b.txt", "Bees make honey.\n")
    write(folder, "sub/c.md", "# Gamma\n\nCamels store fat.\n")
    write(folder, "ignored.json", "{}")
    return folder


def test_plan_sends_only_what_differs(tmp_path: Path) -> None:
    folder = docs_folder(tmp_path)
    state = SyncState(tmp_path / "state.json")
    first = plan(state, scan(folder), now_ms=1000)
    assert [(type(e), e.doc_id, e.version) for e in first.events] == [
        (DocUpsert, "a.md", 1000), (DocUpsert, "b.txt", 1000), (DocUpsert, "sub/c.md", 1000),
    ]  # fmt: skip
    state.record(first.events, {(e.doc_id, e.version): "indexed" for e in first.events})
    assert plan(state, scan(folder), now_ms=2000).events == []

    write(folder, "a.md", "# Alpha\n\nChanged.\n")
    (folder / "b.txt").unlink()
    state.entries["sub/c.md"] = Entry(5000, state.entries["sub/c.md"].content_hash)
    write(folder, "sub/c.md", "Changed too, and the clock is behind the stored version.\n")
    second = plan(state, scan(folder), now_ms=2000)
    assert [(type(e), e.doc_id, e.version) for e in second.events] == [
        (DocUpsert, "a.md", 2000), (DocUpsert, "sub/c.md", 5001), (DocDelete, "b.txt", 2000),
    ]  # fmt: skip
    assert second.unchanged == 0


def test_deleted_doc_comes_back_above_its_tombstone(tmp_path: Path) -> None:
    folder = docs_folder(tmp_path)
    state = SyncState(tmp_path / "s.json", {"b.txt": Entry(9000, None)})
    events = plan(state, scan(folder), now_ms=1000).events
    assert {e.doc_id: e.version for e in events}["b.txt"] == 9001
    (folder / "b.txt").unlink()
    assert "b.txt" not in {e.doc_id for e in plan(state, scan(folder), now_ms=1000).events}


def test_empty_file_is_skipped_not_deleted(tmp_path: Path) -> None:
    folder = docs_folder(tmp_path)
    state = SyncState(tmp_path / "s.json", {"b.txt": Entry(1, "old")})
    write(folder, "b.txt", "  \n")
    found = scan(folder)
    assert found.skipped == {"b.txt": "empty"}
    assert "b.txt" not in {e.doc_id for e in plan(state, found, now_ms=10).events}


def test_scoped_scan_of_a_renamed_folder(tmp_path: Path) -> None:
    folder = docs_folder(tmp_path)
    state = SyncState(tmp_path / "s.json", {d: Entry(1, "h") for d in ("a.md", "sub/c.md")})
    (folder / "sub").rename(folder / "moved")
    found = scan(folder, [folder / "sub", folder / "moved"], state.entries)
    assert found.scope == {"sub/c.md", "moved/c.md"}
    events = plan(state, found, now_ms=10).events
    assert [(type(e), e.doc_id) for e in events] == [
        (DocUpsert, "moved/c.md"), (DocDelete, "sub/c.md"),
    ]  # fmt: skip


def test_state_file_round_trip_and_default_path(tmp_path: Path) -> None:
    path = default_state_path(tmp_path / "data", tmp_path / "docs")
    assert path.parent == tmp_path / "data" / "sync" and path.suffix == ".json"
    assert path == default_state_path(tmp_path / "data", tmp_path / "docs" / ".." / "docs")
    state = SyncState(path, {"a.md": Entry(3, "h"), "gone.md": Entry(4, None)})
    state.save()
    assert SyncState.load(path).entries == state.entries
    path.write_text("[]")
    try:
        SyncState.load(path)
    except ValueError as exc:
        assert "not a sync state file" in str(exc)
    else:
        raise AssertionError("a bad state file loaded")


async def test_sync_is_idempotent_and_follows_changes(
    redis: Redis, streams: StreamSettings, tmp_path: Path
) -> None:
    folder = docs_folder(tmp_path)
    state_path = tmp_path / "state.json"
    async with fake_index(redis, streams) as index:
        first = await sync(redis, folder, SyncState.load(state_path), streams=streams, timeout_s=20)
        assert first.settled and len(index.events) == 3
        v1 = {e.doc_id: e.version for e in index.events}

        again = await sync(redis, folder, SyncState.load(state_path), streams=streams, timeout_s=20)
        assert again.plan.events == [] and again.plan.unchanged == 3
        assert len(index.events) == 3
        assert await redis.xlen(streams.docs) == 3

        write(folder, "a.md", "# Alpha\n\nThe aardvark now eats termites.\n")
        (folder / "sub" / "c.md").unlink()
        third = await sync(redis, folder, SyncState.load(state_path), streams=streams, timeout_s=20)
    assert third.settled
    changed, vanished = index.events[3:]
    assert isinstance(changed, DocUpsert) and changed.doc_id == "a.md"
    assert changed.version > v1["a.md"] and "termites" in changed.text
    assert isinstance(vanished, DocDelete) and vanished.doc_id == "sub/c.md"
    assert vanished.version > v1["sub/c.md"]
    saved = json.loads(state_path.read_text())["docs"]
    assert saved["a.md"]["version"] == changed.version
    assert saved["sub/c.md"] == {"version": vanished.version, "content_hash": None}


async def test_state_is_written_only_after_the_acks(
    redis: Redis, streams: StreamSettings, tmp_path: Path
) -> None:
    folder = docs_folder(tmp_path)
    state_path = tmp_path / "state.json"
    result = await sync(redis, folder, SyncState.load(state_path), streams=streams, timeout_s=1)
    assert not result.settled and not state_path.exists()
    async with fake_index(redis, streams) as index:  # the next run sends them all again
        state = SyncState.load(state_path)
        retried = await sync(redis, folder, state, streams=streams, timeout_s=20)
    assert retried.settled and len(retried.plan.events) == 3
    assert set(json.loads(state_path.read_text())["docs"]) == {"a.md", "b.txt", "sub/c.md"}
    assert len(index.events) == 6  # the unacknowledged first three, then the retries


async def test_cli_ingest_sync_twice_sends_nothing_the_second_time(
    redis: Redis, redis_server: RedisServer, streams: StreamSettings, tmp_path: Path
) -> None:
    folder = docs_folder(tmp_path)
    env = cli_env(redis_server.url, streams, tmp_path / "data")
    async with fake_index(redis, streams):
        code, out, err = await run_cli(env, "ingest", str(folder), "--sync")
        assert code == 0, err
        assert json.loads(out)["upserted"] == 3
        code, out, err = await run_cli(env, "ingest", str(folder), "--sync")
        assert code == 0, err
    summary = json.loads(out)
    assert (summary["upserted"], summary["deleted"], summary["unchanged"]) == (0, 0, 3)
    assert await redis.xlen(streams.docs) == 3
    assert default_state_path(tmp_path / "data", folder).exists()


async def test_cli_sync_needs_a_folder(
    redis_server: RedisServer, streams: StreamSettings, tmp_path: Path
) -> None:
    env = cli_env(redis_server.url, streams, tmp_path / "data")
    code, _, err = await run_cli(env, "ingest", str(tmp_path / "x.jsonl"), "--sync")
    assert code == 1 and json.loads(err)["event"] == "not a folder"
