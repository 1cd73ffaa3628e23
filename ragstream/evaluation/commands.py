"""The `ragstream eval` and `ragstream train-reranker` commands (parsed in `ragstream.cli`)."""

import argparse
import asyncio
import functools
import json
import logging
from pathlib import Path
from typing import Any, cast

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ragstream.evaluation.arguments import DEFAULT_CACHE
from ragstream.evaluation.beir import Dataset, Half, load_dataset, select
from ragstream.evaluation.indexing import IndexInfo, ensure_index
from ragstream.evaluation.metrics import (
    chunk_level,
    docs_by_best_chunk,
    evaluate,
    metric_names,
    percentile,
)
from ragstream.evaluation.runner import Mode, ModeConfig, QueryRun, mode_config, run_queries
from ragstream.evaluation.stores import Backend, eval_store
from shared.embedding import Embedder
from shared.settings import HybridMethod, StoreSettings


def quiet_logs() -> None:
    """Stage logic logs a line per doc/query at INFO: keep warnings only, on stderr."""
    from shared.logging import configure_logging

    configure_logging("WARNING", json=False)
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)


def progress_bar(err: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=err,
    )  # fmt: skip


def load_selected(args: argparse.Namespace) -> Dataset:
    return select(
        load_dataset(Path(args.data), args.split),
        max_docs=args.max_docs,
        max_queries=args.max_queries,
        half=cast(Half | None, args.half),
        seed=args.seed,
    )


@functools.cache
def load_embedder() -> Embedder:
    """The production embedder (`RAG_EMBEDDING_*`, `backend` included), loaded once per
    process."""
    from shared.embedding import load_embedder
    from shared.settings import EmbeddingSettings

    return load_embedder(EmbeddingSettings())


def embedding_summary() -> dict[str, Any]:
    """Which embedder indexed and queried (`RAG_EMBEDDING_*`)."""
    from shared.settings import EmbeddingSettings

    settings = EmbeddingSettings()
    onnx = settings.backend == "onnx"
    return {
        "backend": settings.backend, "model": settings.model or "default",
        "onnx_precision": settings.onnx_precision if onnx else None,
        "onnx_path": str(settings.onnx_path) if onnx and settings.onnx_path else None,
    }  # fmt: skip


def build_index(
    args: argparse.Namespace, dataset: Dataset, embedder: Embedder, err: Console
) -> IndexInfo:
    with progress_bar(err) as progress:
        label = "indexing (streams)" if args.via_streams else "indexing"
        task = progress.add_task(label, total=len(dataset.corpus))
        info = ensure_index(
            dataset, Path(args.cache_dir), embedder,
            via_streams=args.via_streams, redis_url=args.redis_url,
            on_progress=lambda n: progress.advance(task, n),
        )  # fmt: skip
        progress.update(task, completed=len(dataset.corpus), description=label + " (cached)"
                        if info.cached else label)  # fmt: skip
        return info


def evaluate_mode(
    dataset: Dataset,
    info: IndexInfo,
    embedder: Embedder,
    config: ModeConfig,
    *,
    k: int,
    budget_ms: float | None,
    err: Console,
    backend: Backend = "lancedb",
    cache_dir: Path = DEFAULT_CACHE,
    hybrid: HybridMethod | None = None,
) -> tuple[QueryRun, dict[str, Any]]:
    """Run the queries over the index; the run and its metrics (doc level and chunk level)."""
    depth = 3 * max(k, 100)

    async def go() -> QueryRun:
        async with eval_store(
            backend, info, embedder.dim, cache_dir=cache_dir, hybrid=hybrid
        ) as store:
            with progress_bar(err) as progress:
                task = progress.add_task("querying", total=len(dataset.queries))
                return await run_queries(
                    dict(dataset.queries), store, embedder, config, depth=depth,
                    budget_ms=budget_ms, on_progress=lambda: progress.advance(task),
                )  # fmt: skip

    run = asyncio.run(go())
    docs = {q: docs_by_best_chunk(ids) for q, ids in run.chunk_rankings.items()}
    metrics: dict[str, Any] = evaluate(dataset.qrels, docs, metric_names(k))
    metrics["chunk_level"] = chunk_level(dataset.qrels, run.chunk_rankings, k)
    return run, metrics


def run_eval(args: argparse.Namespace, out: Console, err: Console) -> int:
    quiet_logs()
    dataset = load_selected(args)
    config = mode_config(
        cast(Mode, args.mode), reranker_model=args.reranker_model,
        fusion=args.fusion, alpha=args.alpha, candidates=args.candidates,
    )  # fmt: skip
    embedder = load_embedder()
    info = build_index(args, dataset, embedder, err)
    run, metrics = evaluate_mode(
        dataset, info, embedder, config, k=args.k, budget_ms=args.rerank_budget_ms, err=err,
        backend=args.store, cache_dir=Path(args.cache_dir), hybrid=args.weaviate_hybrid,
    )  # fmt: skip
    retriever, reranker = config.retriever, config.reranker
    result: dict[str, Any] = {
        "mode": args.mode,
        "store": args.store,
        "weaviate_hybrid": (
            args.weaviate_hybrid or StoreSettings().weaviate_hybrid
            if args.store == "weaviate" else None
        ),
        "dataset": dataset.name,
        "split": args.split,
        "half": args.half,
        "queries": len(dataset.queries),
        "docs": len(dataset.corpus),
        "chunks": info.chunks,
        "k": args.k,
        "embedding": embedding_summary(),
        **metrics,
        "index_seconds": round(info.seconds, 1),
        "index_cached": info.cached,
        "via_streams": info.via_streams,
        "query_ms_p50": percentile(run.query_ms, 50),
        "query_ms_p95": percentile(run.query_ms, 95),
        "rerank_ms_p50": percentile(run.rerank_ms, 50),
        "rerank_ms_p95": percentile(run.rerank_ms, 95),
        "rerank_over_budget": (
            sum(ms > reranker.budget_ms for ms in run.rerank_ms) if run.rerank_ms else None
        ),
        "rerank_degraded": run.degraded,
        "retriever": {
            "mode": retriever.mode, "fusion": retriever.fusion,
            "alpha": retriever.alpha, "candidates": retriever.candidates,
        },
        "reranker": {
            "backend": reranker.backend, "model": reranker.model, "runtime": reranker.runtime,
            "onnx_precision": reranker.onnx_precision if reranker.runtime == "onnx" else None,
            "max_seq_length": reranker.max_seq_length, "budget_ms": reranker.budget_ms,
            "fused_weight": reranker.fused_weight, "depth": reranker.depth,
        },
    }  # fmt: skip
    line = json.dumps(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    out.print(line, soft_wrap=True, markup=False, highlight=False)
    return 0


def run_train_reranker(args: argparse.Namespace, out: Console, err: Console) -> int:
    from ragstream.evaluation.embedder_training import only_queries, training_split
    from ragstream.evaluation.reranker_training import TrainingConfig, train_reranker

    quiet_logs()
    dataset = load_selected(args)
    embedder = load_embedder()
    info = build_index(args, dataset, embedder, err)
    fold = None if args.all else args.fold
    split = training_split(list(dataset.queries), folds=args.folds, fold=fold, seed=args.cv_seed)
    dataset = only_queries(dataset, split.train)  # --fold K: fold K's queries are never read
    config = TrainingConfig(
        epochs=args.epochs, negatives=args.negatives, max_seq_length=args.max_seq_length,
        batch_groups=args.batch_groups, learning_rate=args.lr, seed=args.seed,
    )  # fmt: skip
    summary = train_reranker(dataset, info, embedder, Path(args.out), config, err=err)
    summary = {
        "dataset": dataset.name, "split": args.split, "half": args.half,
        "folds": args.folds, "fold": fold, "cv_seed": args.cv_seed,
        "held_out_queries": len(split.held_out), **summary,
    }  # fmt: skip
    out.print(json.dumps(summary), soft_wrap=True, markup=False, highlight=False)
    return 0
