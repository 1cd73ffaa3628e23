"""JSONL ingest honours version/title/metadata/source/deleted; `ragstream delete`."""

import json
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ragstream.ingest import ingest
from ragstream.redis_server import RedisServer
from ragstream.sources import SourceDoc, load_documents
from shared.contracts import DocDelete, DocUpsert
from shared.settings import StreamSettings
from tests.cli.fake_index import cli_env, fake_index, run_cli

META = {"team": "hr", "tags": ["policy"], "n": 3}
ROWS = [
    {
        "doc_id": "a", "version": 42, "title": "Leave", "text": "Staff get 30 days.",
        "metadata": {"team": "hr", "tags": ["policy"], "n": 3}, "source": "wiki",
    },
    {"_id": 7, "text": "No version: the clock.", "extra": "ignored"},
    {"doc_id": "gone", "version": 43, "deleted": True},
]  # fmt: skip


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    return path


def test_jsonl_fields_are_read(tmp_path: Path) -> None:
    docs = load_documents(write_jsonl(tmp_path / "c.jsonl", list(ROWS)))
    assert docs == [
        SourceDoc("a", "Leave", "Staff get 30 days.", 42, META, "wiki"),
        SourceDoc("7", "", "No version: the clock.", None, {}, "cli"),
        SourceDoc("gone", "", "", 43, {}, "cli", deleted=True),
    ]  # fmt: skip
    upsert, clocked, delete = (d.event(1000) for d in docs)
    assert isinstance(upsert, DocUpsert)
    assert (upsert.version, upsert.title, upsert.source) == (42, "Leave", "wiki")
    assert upsert.metadata == {"team": "hr", "tags": ["policy"], "n": 3}
    assert clocked.version == 1000
    assert isinstance(delete, DocDelete) and (delete.doc_id, delete.version) == ("gone", 43)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('{"doc_id": "x", "text": "t"', "not valid JSON"),
        ('["x"]', "expected a JSON object"),
        ('{"text": "t"}', "needs doc_id"),
        ('{"doc_id": "x"}', "needs text"),
        ('{"doc_id": "x", "text": "  "}', "needs text"),
        ('{"doc_id": "x", "text": "t", "version": "7"}', "version must be an integer"),
        ('{"doc_id": "x", "text": "t", "version": -1}', "version must be an integer"),
        ('{"doc_id": "x", "text": "t", "version": true}', "version must be an integer"),
        ('{"doc_id": "x", "text": "t", "metadata": [1]}', "metadata must be a JSON object"),
        ('{"doc_id": "x", "text": "t", "source": 3}', "source must be a string"),
        ('{"doc_id": "x", "text": "t", "title": null}', "title must be a string"),
        ('{"doc_id": "x", "deleted": "yes"}', "deleted must be true or false"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{{"doc_id": "ok", "text": "fine"}}\n\n{line}\n', encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        load_documents(path)
    assert str(caught.value).startswith(f"{path}:3: {fragment}")


async def test_ingest_publishes_each_rows_version_and_delete(
    redis: Redis, streams: StreamSettings, tmp_path: Path
) -> None:
    docs = load_documents(write_jsonl(tmp_path / "c.jsonl", list(ROWS)))
    before = time.time_ns() // 1_000_000
    async with fake_index(redis, streams) as index:
        report = await ingest(redis, docs, streams=streams, timeout_s=20)
    assert len(report.outcomes) == 3
    a, seven, gone = index.events
    assert isinstance(a, DocUpsert) and (a.doc_id, a.version, a.source) == ("a", 42, "wiki")
    assert a.metadata == {"team": "hr", "tags": ["policy"], "n": 3}
    assert seven.doc_id == "7" and seven.version >= before
    assert isinstance(gone, DocDelete) and gone.version == 43
    assert report.outcomes[("gone", 43)] == "deleted"


async def test_cli_reports_bad_jsonl_row(
    redis_server: RedisServer, streams: StreamSettings, tmp_path: Path
) -> None:
    bad = {"doc_id": "b", "version": "x", "text": "t"}
    path = write_jsonl(tmp_path / "c.jsonl", [ROWS[0], bad])
    env = cli_env(redis_server.url, streams, tmp_path)
    code, _, err = await run_cli(env, "ingest", str(path))
    assert code == 1
    assert json.loads(err)["reason"].startswith(f"{path}:2: version must be an integer")
    assert "Traceback" not in err


async def test_delete_publishes_deletes_and_waits(
    redis: Redis, redis_server: RedisServer, streams: StreamSettings, tmp_path: Path
) -> None:
    env = cli_env(redis_server.url, streams, tmp_path)
    async with fake_index(redis, streams) as index:
        code, out, err = await run_cli(env, "delete", "x/1.md", "y", "--version", "7", "--json")
        before = time.time_ns() // 1_000_000
        clocked = await run_cli(env, "delete", "z")
    assert code == 0, err
    assert [(type(e), e.doc_id, e.version) for e in index.events[:2]] == [
        (DocDelete, "x/1.md", 7), (DocDelete, "y", 7),
    ]  # fmt: skip
    summary = json.loads(out)
    assert [o["outcome"] for o in summary["outcomes"]] == ["deleted", "deleted"]
    assert clocked[0] == 0, clocked[2]
    assert isinstance(index.events[2], DocDelete) and index.events[2].version >= before


async def test_delete_times_out_without_an_index(
    redis_server: RedisServer, streams: StreamSettings, tmp_path: Path
) -> None:
    env = cli_env(redis_server.url, streams, tmp_path)
    code, _, err = await run_cli(env, "delete", "x", "--timeout", "1")
    assert code == 1
    failure = json.loads(err.splitlines()[-1])
    assert (failure["event"], failure["settled"], failure["docs"]) == ("delete timed out", 0, 1)
