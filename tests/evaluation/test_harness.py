"""`ragstream eval` end to end on a 50-doc slice of SciFact train: direct and via real streams.

The slice holds 20 train queries and their judged docs, padded to 50 docs. A broken retriever
(or chunk-to-doc mapping) falls well below the floors BM25 and hybrid reach here (~0.8).
"""

import argparse
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from ragstream.cli import build_parser
from ragstream.evaluation.beir import Dataset, load_dataset, select
from ragstream.evaluation.commands import evaluate_mode, load_embedder, run_eval
from ragstream.evaluation.indexing import IndexInfo, ensure_index
from ragstream.evaluation.runner import mode_config
from ragstream.redis_server import RedisServer
from ragstream.weaviate_server import WeaviateServer

pytestmark = pytest.mark.slow
NDCG_FLOOR = 0.6
SLICE = ("--max-docs", "50", "--max-queries", "20")
QUIET = Console(file=io.StringIO())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture(scope="module")
def slice_(scifact_dir: Path) -> Dataset:
    return select(load_dataset(scifact_dir, "train"), max_docs=50, max_queries=20)


@pytest.fixture(scope="module")
def direct_index(slice_: Dataset, cache_dir: Path) -> IndexInfo:
    return ensure_index(slice_, cache_dir, load_embedder())


def eval_json(scifact_dir: Path, cache_dir: Path, *extra: str) -> dict[str, object]:
    args: argparse.Namespace = build_parser().parse_args(
        ["eval", "--data", str(scifact_dir), "--split", "train", *SLICE,
         "--cache-dir", str(cache_dir), *extra]
    )  # fmt: skip
    stdout = io.StringIO()
    assert run_eval(args, Console(file=stdout, width=80), QUIET) == 0
    result: dict[str, object] = json.loads(stdout.getvalue().strip().splitlines()[-1])
    return result


def test_slice_covers_its_queries(slice_: Dataset) -> None:
    assert len(slice_.corpus) == 50 and len(slice_.queries) == 20
    assert all(set(rel) <= set(slice_.corpus) for rel in slice_.qrels.values())


@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_eval_command_reaches_the_floor(
    mode: str, scifact_dir: Path, cache_dir: Path, direct_index: IndexInfo
) -> None:
    result = eval_json(scifact_dir, cache_dir, "--mode", mode)
    assert result["index_cached"] is True  # built once by the fixture, reused per mode
    assert result["queries"] == 20 and result["mode"] == mode
    for key in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "query_ms_p50", "query_ms_p95"):
        assert isinstance(result[key], float), key
    assert result["ndcg@10"] >= NDCG_FLOOR  # type: ignore[operator]
    assert result["recall@100"] >= result["recall@10"] >= 0.8  # type: ignore[operator]


@pytest.mark.integration
def test_via_streams_equals_direct(
    slice_: Dataset, cache_dir: Path, direct_index: IndexInfo, redis_server: RedisServer
) -> None:
    embedder = load_embedder()
    streamed = ensure_index(
        slice_, cache_dir, embedder, via_streams=True, redis_url=redis_server.url
    )
    assert streamed.via_streams and streamed.chunks == direct_index.chunks
    for mode in ("bm25", "dense", "hybrid"):
        config = mode_config(mode)  # type: ignore[arg-type]
        runs = [
            evaluate_mode(slice_, info, embedder, config, k=10, budget_ms=None, err=QUIET)
            for info in (direct_index, streamed)
        ]
        (direct_run, direct_metrics), (stream_run, stream_metrics) = runs
        assert stream_run.chunk_rankings == direct_run.chunk_rankings, mode
        assert stream_metrics == direct_metrics, mode


@pytest.mark.parametrize("hybrid", ["client", "native"])
def test_eval_on_weaviate_reaches_the_floor(
    hybrid: str,
    scifact_dir: Path,
    cache_dir: Path,
    direct_index: IndexInfo,
    weaviate_server: WeaviateServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cached index loaded into a real Weaviate once, queried both ways."""
    monkeypatch.setenv("WEAVIATE_URL", weaviate_server.url)
    monkeypatch.setenv("RAG_STORE_WEAVIATE_GRPC_PORT", str(weaviate_server.ports.grpc))
    result = eval_json(
        scifact_dir, cache_dir, "--mode", "hybrid", "--store", "weaviate",
        "--weaviate-hybrid", hybrid,
    )  # fmt: skip
    assert result["store"] == "weaviate" and result["weaviate_hybrid"] == hybrid
    assert result["chunks"] == direct_index.chunks
    assert result["ndcg@10"] >= NDCG_FLOOR  # type: ignore[operator]
    assert result["recall@100"] >= result["recall@10"] >= 0.8  # type: ignore[operator]
