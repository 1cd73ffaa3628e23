"""The Prometheus metrics every stage exports on `/metrics` (one set per process).

The runtime counts and times entries; stages add what only they know (freshness, query latency,
rerank degradations, LLM tokens). Lag and pending are sampled from Redis every
`metrics_interval_s`, not counted per message.
"""

from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram

from shared.contracts.base import utcnow

_ENTRY = ("stage", "stream")
_GROUP = ("stage", "stream", "group")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

consumed = Counter(
    "ragstream_entries_consumed", "Stream entries read (first deliveries and reclaims).", _ENTRY
)
acked = Counter(
    "ragstream_entries_acked", "Entries acknowledged (handled or dead-lettered).", _ENTRY
)
dead_lettered = Counter(
    "ragstream_entries_dead_lettered", "Entries moved to the dead-letter stream.", _ENTRY
)
redelivered = Counter(
    "ragstream_entries_redelivered",
    "Entries taken over from a dead or failed consumer by the reclaim loop.",
    _ENTRY,
)
withheld = Counter(
    "ragstream_outputs_withheld",
    "Entries whose outputs were not published: `taken_over` (a sibling reclaimed the entry "
    "while this consumer was frozen), `answered` (its request was answered already), "
    "`acked_already` (a retried commit whose reply was lost).",
    ("stage", "stream", "reason"),
)
handle_seconds = Histogram(
    "ragstream_handle_seconds",
    "Time to decode, handle and commit one batch.",
    _ENTRY,
    buckets=_LATENCY_BUCKETS,
)
batch_size = Histogram(
    "ragstream_batch_size",
    "Entries per handled batch.",
    _ENTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
group_lag = Gauge(
    "ragstream_group_lag", "Entries in the stream not yet delivered to the group.", _GROUP
)
group_pending = Gauge(
    "ragstream_group_pending", "Entries delivered to the group and not yet acknowledged.", _GROUP
)
doc_freshness_seconds = Histogram(
    "ragstream_doc_freshness_seconds",
    "From a doc event's emission to the index serving it.",
    ("stage",),
    buckets=_LATENCY_BUCKETS,
)
query_latency_seconds = Histogram(
    "ragstream_query_latency_seconds",
    "From a query's creation to this stage's output for it.",
    ("stage",),
    buckets=_LATENCY_BUCKETS,
)
chunk_vectors = Counter(
    "ragstream_chunk_vectors",
    "Chunk vectors written to the index, by where they came from: `embedded` by the model, or "
    "`reused` from the doc's served version (its chunk text was unchanged).",
    ("origin",),
)
rerank_degraded = Counter(
    "ragstream_rerank_degraded",
    "Queries answered in fused order because the reranker failed or ran late.",
    ("reason",),
)
llm_tokens = Counter("ragstream_llm_tokens", "Tokens used by the chat model.", ("kind",))


def observe_since(histogram: Histogram, stage: str, since: datetime) -> None:
    """Record the seconds from `since` to now for `stage`."""
    histogram.labels(stage).observe(max(0.0, (utcnow() - since).total_seconds()))
