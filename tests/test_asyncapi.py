"""docs/asyncapi.yaml stays true: it is what the stages' FastStream apps generate now, it lists
every stage's inputs and outputs, and its payload schemas are the event contracts."""

import difflib
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import yaml
from pydantic import BaseModel

from ragstream.asyncapi import COMMAND, DOCUMENT
from shared import contracts

ROOT = Path(__file__).resolve().parents[1]
CHUNK_EVENTS = "ChunkedDocOrDocUnchangedOrDocDeleteOrDocReindex"
PIPELINE = {
    # operation: (action, stream, payload schema)
    "chunker:rag.docs": ("receive", "rag.docs", "DocUpsertOrDocDelete"),
    "chunker:rag.chunks": ("send", "rag.chunks", CHUNK_EVENTS),
    "chunker:rag.dlq": ("send", "rag.dlq", "DeadLetter"),
    "embedder:rag.chunks": ("receive", "rag.chunks", CHUNK_EVENTS),
    "embedder:rag.indexed": ("send", "rag.indexed", "DocIndexed"),
    "embedder:rag.docs": ("send", "rag.docs", "DocUpsert"),
    "embedder:rag.dlq": ("send", "rag.dlq", "DeadLetter"),
    "retriever:rag.queries": ("receive", "rag.queries", "Query"),
    "retriever:rag.retrieved": ("send", "rag.retrieved", "Retrieved"),
    "retriever:rag.answers": ("send", "rag.answers", "Answer"),
    "retriever:rag.dlq": ("send", "rag.dlq", "DeadLetter"),
    "reranker:rag.retrieved": ("receive", "rag.retrieved", "Retrieved"),
    "reranker:rag.reranked": ("send", "rag.reranked", "Reranked"),
    "reranker:rag.answers": ("send", "rag.answers", "Answer"),
    "reranker:rag.dlq": ("send", "rag.dlq", "DeadLetter"),
    "generator:rag.reranked": ("receive", "rag.reranked", "Reranked"),
    "generator:rag.answers": ("send", "rag.answers", "AnswerOrAnswerDeltaOrAnswerInvalidated"),
    "generator:rag.indexed": ("receive", "rag.indexed", "DocIndexed"),
    "generator:rag.queries": ("send", "rag.queries", "Query"),
    "generator:rag.dlq": ("send", "rag.dlq", "DeadLetter"),
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return dict(yaml.safe_load(DOCUMENT.read_text(encoding="utf-8")))


def resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[unquote(part).replace("~1", "/").replace("~0", "~")]
    return node


@pytest.mark.slow
def test_committed_document_is_current() -> None:
    """Regenerated from the apps (in a process of its own: importing them loads the models)."""
    generated = subprocess.run(
        [sys.executable, "-m", "ragstream.asyncapi", "--stdout"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert generated.returncode == 0, generated.stderr[-4000:]
    committed = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else ""
    if generated.stdout != committed:
        diff = difflib.unified_diff(
            committed.splitlines(keepends=True), generated.stdout.splitlines(keepends=True),
            "docs/asyncapi.yaml (committed)", "generated", n=2,
        )  # fmt: skip
        pytest.fail(f"docs/asyncapi.yaml is out of date: run `{COMMAND}`\n{''.join(diff)[:6000]}")


def test_every_stage_input_and_output_is_described(document: dict[str, Any]) -> None:
    described = {}
    for name, operation in document["operations"].items():
        channel = resolve(document, operation["channel"]["$ref"])
        [message_ref] = operation["messages"]
        message = resolve(document, resolve(document, message_ref["$ref"])["$ref"])
        payload = message["payload"]["$ref"].rsplit("/", 1)[-1]
        described[name] = (operation["action"], channel["address"], payload)
        assert channel["description"], name
    assert described == PIPELINE


def test_payload_schemas_are_the_contracts(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    exported = [getattr(contracts, name) for name in contracts.__all__]
    models = [m for m in exported if isinstance(m, type) and issubclass(m, BaseModel)]
    for model in models:
        if model is contracts.Event:
            continue  # the envelope: every event has its fields, none is published as such
        expected = model.model_json_schema(ref_template="#/components/schemas/{model}")
        expected.pop("$defs", None)
        assert schemas[model.__name__] == expected, model.__name__


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(document):
        resolve(document, ref)


def test_entries_and_trace_fields_are_described(document: dict[str, Any]) -> None:
    description = document["info"]["description"]
    assert "field `event`" in description
    assert "`traceparent`" in description and "`tracestate`" in description
    fields = document["components"]["schemas"]
    assert set(fields["EntryFields"]["properties"]) == {"traceparent", "tracestate"}
    assert set(fields["DeadLetterEntryFields"]["properties"]) == {
        "traceparent", "tracestate", "payload",
    }  # fmt: skip
