"""docs/publishing-events.md stays true: its redis-cli commands and Python examples run against a
real Redis, with a stand-in for the stages that checks what they publish against the contracts,
and every event the page shows is valid under the contracts."""

import json
import re
import shlex
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import TypeAdapter

from ragstream.redis_server import RedisServer
from shared import wire
from shared.contracts import (
    DOC_EVENT,
    Answer,
    AnswerDelta,
    Citation,
    DeadLetter,
    DocDelete,
    DocIndexed,
    IndexOutcome,
)
from shared.contracts.answers import REPLY
from shared.contracts.base import utcnow
from shared.contracts.queries import QUERY
from shared.errors import PermanentError

PAGE = Path(__file__).resolve().parents[1] / "docs" / "publishing-events.md"
PAGE_URL = "redis://127.0.0.1:6379/0"
DB = 7
"""The page uses the default stream names: its own database keeps them apart from other tests."""
EVENTS: dict[str, TypeAdapter[Any]] = {
    "upsert": DOC_EVENT,
    "delete": DOC_EVENT,
    "query": QUERY,
    "answer": REPLY,
    "answer_delta": REPLY,
    "answer.invalidated": REPLY,
    "indexed": TypeAdapter(DocIndexed),
    "dead_letter": TypeAdapter(DeadLetter),
}
INPUTS: dict[str, TypeAdapter[Any]] = {"rag.docs": DOC_EVENT, "rag.queries": QUERY}


def blocks(language: str) -> list[str]:
    text = PAGE.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def commands() -> list[list[str]]:
    """The page's redis-cli commands, as the shell would split them (without `redis-cli`)."""
    lines = [line for block in blocks("bash") for line in block.splitlines()]
    return [shlex.split(line, comments=True)[1:] for line in lines if line.startswith("redis-cli ")]


def events_in(reply: Any) -> list[bytes]:
    """The `event` fields of every entry in an XREAD / XRANGE reply."""
    if isinstance(reply, dict):
        return [reply[b"event"]] if b"event" in reply else []
    if isinstance(reply, list | tuple):
        return [event for item in reply for event in events_in(item)]
    return []


class Stages:
    """Stands in for the pipeline: acks every doc event on `rag.indexed` and answers every query
    on its reply stream (a delta first if it asked for streaming). What it reads must be valid."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url)
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        cursors: dict[str, bytes] = {"rag.docs": b"0-0", "rag.queries": b"0-0"}
        while not self.stopping.is_set():
            for stream, entries in self.redis.xread(cursors, block=100):
                for entry_id, fields in entries:
                    cursors[stream.decode()] = entry_id
                    try:
                        self.handle(stream.decode(), fields[b"event"])
                    except Exception as exc:
                        self.errors.append(f"{stream.decode()} {entry_id!r}: {exc}")

    def handle(self, stream: str, payload: bytes) -> None:
        if stream == "rag.docs":
            doc = DOC_EVENT.validate_json(payload)
            deleted = isinstance(doc, DocDelete)
            ack = DocIndexed(
                doc_id=doc.doc_id,
                version=doc.version,
                outcome=IndexOutcome.DELETED if deleted else IndexOutcome.INDEXED,
                n_chunks=0 if deleted else 1,
                doc_emitted_at=doc.emitted_at,
                indexed_at=utcnow(),
            )
            self.redis.xadd("rag.indexed", wire.encode(ack))
            return
        query = QUERY.validate_json(payload)
        reply = query.reply_to or "rag.answers"
        if query.stream:
            delta = AnswerDelta(query_id=query.query_id, seq=0, text="Staff get 30 days")
            self.redis.xadd(reply, wire.encode(delta))
        citation = Citation(
            marker=1, chunk_id="c0", doc_id="handbook/leave", version=44, title="Leave policy",
            char_start=9, char_end=27, quote="Staff get 30 days.",
        )  # fmt: skip
        answer = Answer(
            query_id=query.query_id, text="Staff get 30 days [1].", citations=(citation,)
        )
        self.redis.xadd(reply, wire.encode(answer))


@pytest.fixture
def page_redis(redis_server: RedisServer) -> Iterator[tuple[redis.Redis, Stages]]:
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    stages = Stages(url)
    stages.thread.start()
    yield client, stages
    stages.stopping.set()
    stages.thread.join(timeout=5)
    client.flushdb()
    client.close()
    stages.redis.close()


def test_every_event_shown_is_valid() -> None:
    shown = {json.loads(block)["type"] for block in blocks("json")}
    assert shown >= {"indexed", "answer_delta", "answer", "dead_letter"}
    for block in blocks("json"):
        EVENTS[json.loads(block)["type"]].validate_json(block)


def test_dead_letter_reason_is_what_the_stage_says() -> None:
    """The page's dead letter is the one its payload really gets."""
    text = PAGE.read_text(encoding="utf-8")
    payload = re.search(r"\(payload `(\{.*?\})`\)", text)
    assert payload is not None, "the dead-letter example names its payload"
    with pytest.raises(PermanentError) as rejected:
        wire.decode(DOC_EVENT, {b"event": payload[1].encode()}, max_bytes=1 << 20)
    letters = [json.loads(b) for b in blocks("json") if json.loads(b)["type"] == "dead_letter"]
    assert [letter["reason"] for letter in letters] == [rejected.value.reason]


def test_redis_cli_examples_run(page_redis: tuple[redis.Redis, Stages]) -> None:
    client, stages = page_redis
    ran = []
    for args in commands():
        if args[0].upper() == "XADD":
            INPUTS[args[1]].validate_json(args[args.index("event") + 1])
        reply = client.execute_command(*args)
        for event in events_in(reply):
            EVENTS[json.loads(event)["type"]].validate_json(event)
        ran.append((args[0].upper(), reply))
    assert " ".join(command for command, _ in ran) == "XADD XADD XREVRANGE XADD XREAD XRANGE"
    answers = [json.loads(e) for _, reply in ran for e in events_in(reply)]
    assert any(a["type"] == "answer" and a["query_id"] == "q-7f3a" for a in answers)
    assert stages.errors == []


def test_python_examples_run(page_redis: tuple[redis.Redis, Stages]) -> None:
    url = page_redis[0].connection_pool.connection_kwargs
    target = f"redis://{url['host']}:{url['port']}/{DB}"
    examples = blocks("python")
    assert len(examples) == 2
    results = []
    for index, code in enumerate(examples):
        assert PAGE_URL in code, "each example connects to the default URL"
        namespace: dict[str, Any] = {"__name__": f"publishing_example_{index}"}
        exec(compile(code.replace(PAGE_URL, target), f"{PAGE.name}[{index}]", "exec"), namespace)
        results.append(namespace)
    ack = DocIndexed.model_validate(results[0]["ack"])
    assert (ack.doc_id, ack.version, ack.outcome) == ("handbook/leave", 44, IndexOutcome.INDEXED)
    answer = REPLY.validate_python(results[1]["answer"])
    assert isinstance(answer, Answer) and answer.citations
    assert page_redis[1].errors == []
