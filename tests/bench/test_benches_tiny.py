"""The ingest and query benchmarks, run tiny: they start the real stages, print one JSON line,
and report the instrumentation's cost per stage (the full-size runs are by hand)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.evaluation.conftest import datasets_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCIFACT = datasets_dir() / "scifact"


def run_bench(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def assert_instrumented(result: dict[str, Any], stages: set[str]) -> None:
    instrumentation = result["instrumentation"]
    assert isinstance(instrumentation, dict)
    assert set(instrumentation) == stages
    for figures in instrumentation.values():
        assert figures["entries"] > 0
        assert figures["handle_s"] > 0
        assert 0 <= figures["metrics_pct"] < 100


def test_ingest_bench(onnx_export: Path) -> None:
    result = run_bench(
        "bench.ingest", "--corpus", str(SCIFACT / "corpus.jsonl"), "--limit", "20",
        "--updates", "3", "--ceiling-sample", "20", "--edit-paragraphs", "12",
        "--backends", "torch,onnx-int8",
        env={"RAG_EMBEDDING_ONNX_PATH": str(onnx_export)},
    )  # fmt: skip
    backends = result["backends"]
    assert isinstance(backends, dict) and set(backends) == {"torch", "onnx-int8"}
    for figures in backends.values():
        assert figures["bulk"]["indexed"] == 20
        resync = figures["resync"]
        assert resync["indexed"] == resync["unchanged"] == 20  # nothing embedded again
        edit = figures["edit"]
        assert edit["outcome"] == "indexed" and 1 <= edit["chunks_embedded"] <= 2
        assert edit["chunks_reused"] >= 1
        assert figures["updates"]["n"] == 3
        assert_instrumented(figures, {"chunker", "embedder"})


def test_query_bench() -> None:
    result = run_bench(
        "bench.query", "--corpus", str(SCIFACT / "corpus.jsonl"), "--limit-docs", "20",
        "--queries", str(SCIFACT / "queries-train.jsonl"), "--n", "3",
    )  # fmt: skip
    assert result["queries"] == 3
    assert result["errors"] == 0
    assert_instrumented(result, {"chunker", "embedder", "retriever", "reranker", "generator"})


def test_scale_bench(tmp_path: Path) -> None:
    common = (
        "bench.scale", "--corpus", str(SCIFACT / "corpus.jsonl"),
        "--queries", str(SCIFACT / "queries-train.jsonl"), "--chunks", "3000", "--n", "10",
        "--warmup", "5", "--root", str(tmp_path / "index"),
    )  # fmt: skip
    result = run_bench(
        *common, "--source-docs", "30", "--batch-docs", "100", "--optimize-every", "5"
    )
    assert result["chunks"] == 3000
    indices = result["indices"]
    assert isinstance(indices, dict)
    assert indices["vector_ann_3000"] == "IvfPq"  # built past --ann-min-rows (default: --chunks)
    assert result["queries"] == 10 and result["warmup_queries"] == 5
    assert float(result["recall_at_10"]) >= 0.9
    assert int(result["disk_bytes_per_million_chunks"]) > 0

    rebuilt = run_bench(*common, "--reuse", "--rebuild-ann", "--partition-rows", "256")
    assert rebuilt["write_path"] == "reused: built by an earlier run; ANN index rebuilt"
    assert rebuilt["chunks"] == 3000
    assert rebuilt["indices"] == indices
    ann_bytes = [r["index_bytes"]["vector_ann_3000"] for r in (result, rebuilt)]
    assert ann_bytes[0] != ann_bytes[1]  # retrained: 11 partitions (centroids), not 2
    assert float(rebuilt["recall_at_10"]) >= 0.9


def test_stream_memory_bench() -> None:
    result = run_bench(
        "bench.stream_memory", "--corpus", str(SCIFACT / "corpus.jsonl"), "--n", "50"
    )
    for kind in ("doc_event", "chunk_event"):
        figures = result[kind]
        assert isinstance(figures, dict)
        assert figures["entries"] == 50
        # MEMORY USAGE of the stream holds every payload; INFO used_memory's growth over 50
        # entries also moves with the allocator, so only its sign is certain
        assert figures["memory_usage_bytes_per_entry"] > figures["payload_bytes_median"]
        assert figures["used_memory_bytes_per_pending_entry"] > 0
