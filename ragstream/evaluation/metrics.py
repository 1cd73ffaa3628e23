"""Chunk hits to doc rankings, and IR metrics on them (computed by `ranx`)."""

import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ragstream.evaluation.beir import Qrels

Rankings = Mapping[str, Sequence[str]]
"""Query id -> doc ids, best first, each at most once."""


def metric_names(k: int) -> list[str]:
    names = [f"ndcg@{k}", f"recall@{k}", "recall@100", f"mrr@{k}", "recall@1", "recall@5",
             "recall@20"]  # fmt: skip
    return list(dict.fromkeys(names))


def docs_by_best_chunk(doc_ids: Iterable[str]) -> list[str]:
    """Chunk doc ids, best chunk first -> each doc once, ranked by its best chunk.

    This is max-score aggregation for a ranked chunk list (whatever the score's scale).
    """
    return list(dict.fromkeys(doc_ids))


def evaluate(qrels: Qrels, rankings: Rankings, metrics: Sequence[str]) -> dict[str, float]:
    """Mean of each metric over the queries of `qrels` (a query without results scores 0)."""
    from ranx import Qrels as RanxQrels
    from ranx import Run as RanxRun
    from ranx import evaluate as ranx_evaluate

    run = {
        qid: {doc: float(len(ranked) - i) for i, doc in enumerate(ranked)}
        for qid in qrels
        if (ranked := rankings.get(qid))
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba's "unsafe cast" type-safety notes
        scores = ranx_evaluate(
            RanxQrels({q: dict(d) for q, d in qrels.items()}),
            RanxRun(run or {"": {"": 0.0}}),
            list(metrics),
            make_comparable=True,
        )
    if isinstance(scores, float | np.floating):  # ranx returns a bare number for one metric
        scores = {metrics[0]: scores}
    return {name: round(float(scores[name]), 6) for name in metrics}


def chunk_level(qrels: Qrels, chunk_rankings: Rankings, k: int) -> dict[str, float]:
    """Metrics if a cutoff counted chunks, not docs: the docs of the top-k chunks only.

    The contrast with `evaluate` on `docs_by_best_chunk` shows what aggregation recovers.
    """
    out: dict[str, float] = {}
    for cutoff, names in ((k, [f"ndcg@{k}", f"recall@{k}"]), (100, ["recall@100"])):
        cut = {q: docs_by_best_chunk(ids[:cutoff]) for q, ids in chunk_rankings.items()}
        out.update(evaluate(qrels, cut, names))
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None
