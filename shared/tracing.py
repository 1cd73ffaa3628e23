"""W3C trace context across stream hops; spans exported by OTLP when `OTEL_*` asks for it.

A trace context travels in each stream entry as a `traceparent` (and `tracestate`) field beside
`event`, so one doc change is one trace (ingest → chunker → embedder → indexed ack) and one query
is one trace (ask → retriever → reranker → generator → answer). Each stage adds a span for the
time its entry waited in the stream and one for handling it.

Tracing is on when the standard variables ask for it: `OTEL_TRACES_EXPORTER` (other than
`none`) or an `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, and not `OTEL_SDK_DISABLED=true`. Off, no
tracer exists and the runtime skips every tracing call.
"""

import os
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.delivery import Entry
from shared.errors import PermanentError
from shared.wire import Fields, entry_ms

TRACE_FIELDS = (b"traceparent", b"tracestate")
_PROPAGATOR = TraceContextTextMapPropagator()


class _Active:
    """The tracer in use (None: tracing is off)."""

    tracer: Tracer | None = None


class _EntryGetter(Getter[Mapping[bytes, bytes]]):
    def get(self, carrier: Mapping[bytes, bytes], key: str) -> list[str] | None:
        value = carrier.get(key.encode())
        return [value.decode(errors="replace")] if value is not None else None

    def keys(self, carrier: Mapping[bytes, bytes]) -> list[str]:
        return [k.decode(errors="replace") for k in carrier]


class _EntrySetter(Setter[Fields]):
    def set(self, carrier: Fields, key: str, value: str) -> None:
        carrier[key.encode()] = value.encode()


_GETTER, _SETTER = _EntryGetter(), _EntrySetter()


def enabled_by_env() -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_tracing(service_name: str) -> None:
    """Export spans by OTLP/HTTP if the environment asks for it (idempotent)."""
    if _Active.tracer is not None or not enabled_by_env():
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)


def use_provider(provider: trace.TracerProvider | None) -> None:
    """Trace with `provider` (tests pass one with an in-memory exporter), or stop tracing."""
    _Active.tracer = provider.get_tracer("ragstream") if provider is not None else None


def tracer() -> Tracer | None:
    """The tracer, or None when tracing is off (callers then skip all tracing work)."""
    return _Active.tracer


def inject(fields: Fields, span: Span | None = None) -> None:
    """Put the trace context of `span` (default: the current span) into an entry's fields."""
    if _Active.tracer is None:
        return
    ctx = trace.set_span_in_context(span) if span is not None else None
    _PROPAGATOR.inject(fields, context=ctx, setter=_SETTER)


def extract(fields: Mapping[bytes, bytes]) -> otel_context.Context:
    """The trace context an entry carries (an empty context if none)."""
    return _PROPAGATOR.extract(fields, getter=_GETTER)


@contextmanager
def client_span(name: str, **attributes: str) -> Iterator[Span | None]:
    """A producer-side root span (ingest, ask, the gateway), current while the block runs."""
    tracer = _Active.tracer
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, kind=SpanKind.PRODUCER, attributes=attributes) as s:
        yield s


def entry_spans(stage: str, stream: str, entries: Iterable[Entry]) -> dict[bytes, Span]:
    """Per entry: a span for its wait in `stream` (from XADD to now, by the entry id's clock)
    and an open span for handling it, both children of the context the entry carries."""
    tracer = _Active.tracer
    if tracer is None:
        return {}
    now = time.time_ns()
    spans: dict[bytes, Span] = {}
    for entry in entries:
        parent = extract(entry.fields)
        added_ns = entry_ms(entry.id) * 1_000_000
        attributes = {"messaging.system": "redis", "messaging.destination.name": stream,
                      "messaging.message.id": entry.id.decode()}  # fmt: skip
        tracer.start_span(
            f"{stream} wait", context=parent, kind=SpanKind.CONSUMER,
            start_time=min(added_ns, now), attributes=attributes,
        ).end(end_time=now)  # fmt: skip
        spans[entry.id] = tracer.start_span(
            f"{stage} process", context=parent, kind=SpanKind.CONSUMER, start_time=now,
            attributes=attributes,
        )  # fmt: skip
    return spans


def end_spans(spans: Mapping[bytes, Span], outcomes: Mapping[bytes, object]) -> None:
    """End each entry's handling span: an error if dead-lettered, unset if left pending."""
    for entry_id, span in spans.items():
        outcome = outcomes.get(entry_id)
        if isinstance(outcome, PermanentError):
            span.set_status(Status(StatusCode.ERROR, outcome.reason))
            span.set_attribute("ragstream.dead_lettered", True)
        elif outcome is None:
            span.set_attribute("ragstream.left_pending", True)
        span.end()
