"""`ragstream dlq list|replay|purge` against a real Redis."""

import argparse
import json

from redis.asyncio import Redis
from rich.console import Console

from ragstream import dlq
from shared import wire
from shared.contracts import DeadLetter, DocUpsert
from shared.settings import StreamSettings


async def letter(
    redis: Redis, streams: StreamSettings, stage: str, doc_id: str, source: str
) -> bytes:
    payload = DocUpsert(doc_id=doc_id, version=1, text="hello").model_dump_json().encode()
    dead = DeadLetter(
        stage=stage,
        source_stream=source,
        entry_id="1-0",
        reason="boom",
        deliveries=6,
        doc_id=doc_id,
    )
    fields = wire.encode(dead)
    fields[b"payload"] = payload
    await redis.xadd(streams.dlq, fields)
    return payload


def args(action: str, *ids: str, stage: str | None = None, **flags: object) -> argparse.Namespace:
    values = {"stage": stage, "limit": None, "all": False, "json": False, **flags}
    return argparse.Namespace(action=action, ids=list(ids), **values)


async def test_list_replay_purge(redis: Redis, streams: StreamSettings) -> None:
    first = await letter(redis, streams, "chunker", "d1", streams.docs)
    await letter(redis, streams, "embedder", "d2", streams.chunks)
    await letter(redis, streams, "chunker", "d3", streams.docs)
    console = Console(record=True, width=200)

    assert await dlq.run(args("list", json=True), redis, console, streams) == 0
    listed = [
        json.loads(line) for line in console.export_text().splitlines() if line.startswith("{")
    ]
    assert [(x["stage"], x["doc_id"], x["deliveries"], x["reason"]) for x in listed] == [
        ("chunker", "d1", 6, "boom"), ("embedder", "d2", 6, "boom"), ("chunker", "d3", 6, "boom")
    ]  # fmt: skip

    first_id = listed[0]["id"]
    assert await dlq.run(args("replay", first_id), redis, console, streams) == 0
    assert [f[b"event"] for _, f in await redis.xrange(streams.docs)] == [first]
    remaining = await dlq.read_letters(redis, streams.dlq)
    assert [x.letter.doc_id for x in remaining] == ["d2", "d3"]

    assert await dlq.run(args("replay", stage="embedder"), redis, console, streams) == 0
    assert await redis.xlen(streams.chunks) == 1
    assert [x.letter.doc_id for x in await dlq.read_letters(redis, streams.dlq)] == ["d3"]

    assert await dlq.run(args("purge"), redis, console, streams) == 2  # refuses without a filter
    assert await dlq.run(args("purge", all=True), redis, console, streams) == 0
    assert await redis.xlen(streams.dlq) == 0
    assert await redis.xlen(streams.docs) == 1


def test_cli_has_dlq_command() -> None:
    from ragstream.cli import build_parser

    parsed = build_parser().parse_args(["dlq", "replay", "--stage", "chunker", "--id", "5-0"])
    assert (parsed.action, parsed.stage, parsed.ids) == ("replay", "chunker", ["5-0"])
