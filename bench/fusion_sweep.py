"""Choose the retriever's fusion defaults by measurement: method x alpha x candidate depth.

    python -m bench.fusion_sweep --data ../shared/datasets/scifact --split train \
        --out docs/evaluation-results/fusion-sweep.json

Reads each query's dense and BM25 lists once from the cached eval index (built by
`ragstream eval`, same cache), each `--max-candidates` deep, then fuses the top-`c` of both with
the store's own `fuse` for every setting: exactly what `hybrid_search` with `candidates=c`
computes, without re-querying 809 x settings times. Confirm the winner with `ragstream eval`.
"""

import argparse
import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from ragstream.evaluation.arguments import DEFAULT_CACHE
from ragstream.evaluation.beir import Dataset, load_dataset
from ragstream.evaluation.commands import load_embedder, progress_bar, quiet_logs
from ragstream.evaluation.indexing import ensure_index
from ragstream.evaluation.metrics import docs_by_best_chunk, evaluate
from shared.embedding import Embedder, encode_async
from shared.store.fusion import fuse
from shared.store.lancedb_store import LanceDBStore
from shared.store.records import FusionMethod, SearchRequest

METHODS: tuple[FusionMethod, ...] = ("zscore", "minmax", "rrf")
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEPTHS = (50, 100, 200, 300)
Lists = dict[str, tuple[list[tuple[str, float]], list[tuple[str, float]]]]


async def read_lists(
    dataset: Dataset, path: str, embedder: Embedder, depth: int, err: Console
) -> tuple[Lists, dict[str, str]]:
    """Per query: (dense, bm25) lists of (chunk id, raw score), best first; chunk -> doc."""
    store = LanceDBStore(path, embedder.dim)
    lists: Lists = {}
    doc_of: dict[str, str] = {}
    try:
        with progress_bar(err) as progress:
            task = progress.add_task("reading lists", total=len(dataset.queries))
            for qid, text in dataset.queries.items():
                vector = (await encode_async(embedder, [text]))[0]
                pair = []
                for mode in ("dense", "bm25"):
                    request = SearchRequest(text, vector, k=depth, mode=mode, candidates=depth)
                    hits = await store.hybrid_search(request)
                    doc_of.update((h.chunk.chunk_id, h.chunk.doc_id) for h in hits)
                    pair.append([(h.chunk.chunk_id, h.score) for h in hits])
                lists[qid] = (pair[0], pair[1])
                progress.advance(task)
    finally:
        await store.close()
    return lists, doc_of


def score(
    dataset: Dataset, lists: Lists, doc_of: dict[str, str],
    *, method: FusionMethod, alpha: float, depth: int,
) -> dict[str, float]:  # fmt: skip
    """Metrics of the fusion of both lists' top-`depth` (alpha 1 / 0: the dense / BM25 list
    alone, as the store reads only that list in those modes)."""
    rankings = {}
    for qid, (dense, bm25) in lists.items():
        fused = fuse(
            dense[:depth] if alpha > 0 else [], bm25[:depth] if alpha < 1 else [],
            method=method, alpha=alpha,
        )  # fmt: skip
        rankings[qid] = docs_by_best_chunk(doc_of[f.id] for f in fused)
    return evaluate(dataset.qrels, rankings, ["ndcg@10", "recall@100", "mrr@10"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    err = Console(stderr=True)
    quiet_logs()
    dataset = load_dataset(Path(args.data), args.split)
    embedder = load_embedder()
    info = ensure_index(dataset, Path(args.cache_dir), embedder)
    lists, doc_of = asyncio.run(read_lists(dataset, info.path, embedder, max(DEPTHS), err))
    rows: list[dict[str, Any]] = []
    for depth in DEPTHS:
        for name, pick in (("dense", 1.0), ("bm25", 0.0)):
            metrics = score(dataset, lists, doc_of, method="zscore", alpha=pick, depth=depth)
            rows.append({"fusion": name, "alpha": pick, "candidates": depth, **metrics})
    grid = list(itertools.product(METHODS, ALPHAS, DEPTHS))
    with progress_bar(err) as progress:
        task = progress.add_task("fusing", total=len(grid))
        for method, alpha, depth in grid:
            metrics = score(dataset, lists, doc_of, method=method, alpha=alpha, depth=depth)
            rows.append({"fusion": method, "alpha": alpha, "candidates": depth, **metrics})
            progress.advance(task)
    fused = [r for r in rows if r["fusion"] in METHODS]
    best = max(fused, key=lambda r: (r["ndcg@10"], r["recall@100"]))
    result = {"dataset": dataset.name, "split": args.split, "queries": len(dataset.queries),
              "index": info.key, "best": best, "rows": rows}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    Console(soft_wrap=True).print(json.dumps(best), markup=False, highlight=False)


if __name__ == "__main__":
    main()
