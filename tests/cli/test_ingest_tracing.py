"""Each doc `ragstream ingest` publishes starts its own trace: an `ingest` span whose context the
entry carries; with tracing off, the entry is the bare event."""

from collections.abc import Iterator
from typing import cast

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ragstream.ingest import traced_entries
from shared import tracing, wire
from shared.contracts import DocUpsert

EVENTS = [DocUpsert(doc_id=f"d{i}", version=7, text="Some text.") for i in range(3)]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)


def test_each_doc_is_one_trace(spans: InMemorySpanExporter) -> None:
    entries = traced_entries(EVENTS)
    finished = spans.get_finished_spans()
    assert [s.name for s in finished] == ["ingest"] * 3
    assert [s.attributes and s.attributes["doc_id"] for s in finished] == ["d0", "d1", "d2"]
    assert len({s.context.trace_id for s in finished if s.context}) == 3
    for event, entry, span in zip(EVENTS, entries, finished, strict=True):
        assert entry[wire.EVENT_FIELD] == wire.encode(event)[wire.EVENT_FIELD]
        carried = tracing.extract(cast(dict[bytes, bytes], entry))
        assert span.context is not None
        assert trace.get_current_span(carried).get_span_context().span_id == span.context.span_id


def test_untraced_entries_are_the_bare_events() -> None:
    assert traced_entries(EVENTS) == [wire.encode(e) for e in EVENTS]
