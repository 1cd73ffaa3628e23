"""What the stage runtime's instrumentation costs, as a share of the stages' handling time.

After a benchmark run, each stage's `/metrics` says how many batches and entries it handled and
how long handling took (`ragstream_handle_seconds`). This module times, in this process, the
instrumentation calls the runtime makes per batch (counters, histograms, the tracing calls that
are no-ops while tracing is off) and per entry (a stage's own histogram, e.g. freshness), and
reports `cost × batches / handling seconds` per stage. With `traced=True` it times the same with
a real tracer (spans kept in memory), i.e. the cost when OTLP export is on, export excluded.
"""

import time
from collections.abc import Mapping

import httpx
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics, tracing, wire
from shared.delivery import Entry
from shared.settings import StreamSettings


def scrape(port: int) -> dict[str, float]:
    """Totals over all label sets of every sample a stage exports, by sample name."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def batch_cost_s(entries: int, *, traced: bool = False, repeat: int = 2000) -> float:
    """Seconds the runtime's instrumentation adds to one batch of `entries` entries."""
    provider = TracerProvider() if traced else None
    tracing.use_provider(provider)
    batch = [Entry(f"{1_700_000_000_000 + i}-0".encode(), {}) for i in range(entries)]
    labels = ("bench", "bench.stream")
    outcomes: dict[bytes, object] = {e.id: () for e in batch}
    fields = wire.encode(StreamSettings())  # an output entry's fields (tracing adds to them)
    try:
        started = time.perf_counter()
        for _ in range(repeat):
            metrics.consumed.labels(*labels).inc(entries)
            metrics.batch_size.labels(*labels).observe(entries)
            spans = tracing.entry_spans("bench", "bench.stream", batch)
            for entry in batch:
                span = spans.get(entry.id)
                if span is not None:
                    tracing.inject(fields, span)
                metrics.doc_freshness_seconds.labels("bench").observe(0.1)
            tracing.end_spans(spans, outcomes)
            metrics.handle_seconds.labels(*labels).observe(time.perf_counter() - started)
            metrics.acked.labels(*labels).inc(entries)
        elapsed = time.perf_counter() - started
    finally:
        tracing.use_provider(None)
        if provider is not None:
            provider.shutdown()
    return elapsed / repeat


def overhead(ports: Mapping[str, int]) -> dict[str, dict[str, float]]:
    """Per stage: batches, entries, handling seconds, and the instrumentation's share of it
    (`metrics_pct`, tracing off as by default; `traced_pct`, tracing on)."""
    report: dict[str, dict[str, float]] = {}
    for stage, port in ports.items():
        totals = scrape(port)
        batches = totals.get("ragstream_handle_seconds_count", 0.0)
        handled_s = totals.get("ragstream_handle_seconds_sum", 0.0)
        entries = totals.get("ragstream_entries_consumed_total", 0.0)
        if not batches or not handled_s:
            continue
        per_batch = max(1, round(entries / batches))
        report[stage] = {
            "batches": batches,
            "entries": entries,
            "handle_s": round(handled_s, 3),
            "metrics_pct": round(100 * batch_cost_s(per_batch) * batches / handled_s, 4),
            "traced_pct": round(
                100 * batch_cost_s(per_batch, traced=True, repeat=500) * batches / handled_s, 4
            ),
        }
    return report
