"""`ragstream evaluate-cv`: choose retrieval settings by 5-fold cross-validation over queries.

One index and one embedding pass per dataset: each query's dense and BM25 chunk lists are read
once (`cv_data.cached_lists`, cached), a whole-document BM25 list is computed beside them, and,
with `--reranker-model`, the cross-encoder scores the chunks any reranked setting could reach
(cached). Every grid setting is then scored offline by the pure functions of
`ragstream.evaluation.cross_validation`: per-query nDCG@10 (and R@100, MRR@10) of each setting,
folds by seeded hash of the query id, mean ± sd per setting over the folds, and a nested CV of
the choice rules (pick on 4 folds, measure on the 5th) against the current defaults.

Grid (no rerank): fusion (zscore, minmax, rrf) x alpha x candidates x chunk -> doc aggregation
(max; max + decayed sum of the doc's other chunks; max + whole-doc BM25 field). Rerank grid (on
the queries the reranker was not trained on): fusion x rerank depth x blend weight, max
aggregation (the serving path), beside the same fusion settings without rerank.
"""

import argparse
import functools
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from rich.console import Console
from rich.table import Table

from ragstream.evaluation import cross_validation as cv
from ragstream.evaluation.beir import Dataset, Half, select
from ragstream.evaluation.commands import (
    build_index,
    embedding_summary,
    load_embedder,
    load_selected,
    progress_bar,
    quiet_logs,
)
from ragstream.evaluation.cv_data import (
    Lists,
    Scored,
    cached_lists,
    cached_rerank_scores,
    doc_bm25,
)
from ragstream.evaluation.indexing import IndexInfo
from ragstream.evaluation.metrics import docs_by_best_chunk, evaluate

METHODS = ("zscore", "minmax", "rrf")
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEPTHS = (50, 100, 200, 300)
AGGREGATIONS: tuple[tuple[str, float], ...] = (
    ("max", 0.0),
    ("decay", 0.1),
    ("decay", 0.25),
    ("decay", 0.5),
    ("docbm25", 0.1),
    ("docbm25", 0.25),
    ("docbm25", 0.5),
    ("docbm25", 0.75),
    ("docbm25", 1.0),
)
DECAY = 0.5
RERANK_DEPTHS = (10, 20, 30)
RERANK_WEIGHTS = (0.0, 0.25, 0.5, 0.75)
RERANK_ALPHAS = (0.4, 0.5, 0.6)
RERANK_CANDIDATES = (100, 300)
CHUNK_K = 300
"""Fused chunks a query keeps (`ragstream eval` asks for 3 x max(k, 100) = 300)."""
K = 10
METRICS = ("ndcg@10", "recall@100", "mrr@10")
STUDIES = ("fusion", "retrieval", "rerank")


@dataclass(frozen=True, slots=True)
class Setting:
    fusion: str
    alpha: float
    candidates: int
    aggregation: str = "max"
    agg_weight: float = 0.0
    rerank_depth: int = 0
    rerank_weight: float = 0.0

    def label(self) -> str:
        text = f"{self.fusion} α={self.alpha:g} c={self.candidates}"
        if self.aggregation == "decay":
            text += f" +decay λ={self.agg_weight:g}"
        elif self.aggregation == "docbm25":
            text += f" +docBM25 γ={self.agg_weight:g}"
        if self.rerank_depth:
            text += f" +rerank d={self.rerank_depth} w={self.rerank_weight:g}"
        return text


@dataclass
class QueryData:
    """One query's cached lists as arrays over the union of their chunks."""

    ids: list[str]
    dense: cv.Floats
    dense_rank: cv.Ints
    bm25: cv.Floats
    bm25_rank: cv.Ints
    tie: cv.Ints
    chunk_docs: cv.Ints
    n_docs: int
    gains: cv.Floats
    """Relevance of each local doc."""
    ideal: cv.Floats
    doc_bm25: cv.Floats
    doc_bm25_rank: cv.Ints
    doc_names: list[str]


def _ranks(
    items: Scored, ids: Sequence[str], position: Mapping[str, int]
) -> tuple[cv.Floats, cv.Ints]:
    scores = np.zeros(len(ids))
    ranks = np.full(len(ids), -1, dtype=np.int64)
    best: dict[str, float] = {}
    for cid, score in items:
        best.setdefault(cid, score)
    if best:
        keys = list(best)
        order = cv.rank_by_score(np.asarray([best[c] for c in keys]), keys)
        for cid, rank in zip(keys, order, strict=True):
            scores[position[cid]] = best[cid]
            ranks[position[cid]] = rank
    return scores, ranks


def prepare(
    qrels: Mapping[str, int], dense: Scored, bm25: Scored, docs: Scored, doc_of: Mapping[str, str]
) -> QueryData:
    ids = sorted({c for c, _ in dense} | {c for c, _ in bm25})
    position = {c: i for i, c in enumerate(ids)}
    d_scores, d_ranks = _ranks(dense, ids, position)
    b_scores, b_ranks = _ranks(bm25, ids, position)
    names = list(dict.fromkeys([*(doc_of[c] for c in ids), *(d for d, _ in docs)]))
    local = {d: i for i, d in enumerate(names)}
    doc_scores = np.zeros(len(names))
    doc_ranks = np.full(len(names), -1, dtype=np.int64)
    for rank, (doc, score) in enumerate(docs):
        doc_scores[local[doc]], doc_ranks[local[doc]] = score, rank
    return QueryData(
        ids=ids,
        dense=d_scores,
        dense_rank=d_ranks,
        bm25=b_scores,
        bm25_rank=b_ranks,
        tie=np.arange(len(ids), dtype=np.int64),
        chunk_docs=np.asarray([local[doc_of[c]] for c in ids], dtype=np.int64),
        n_docs=len(names),
        gains=np.asarray([float(qrels.get(d, 0)) for d in names]),
        ideal=np.asarray(sorted(map(float, qrels.values()), reverse=True)),
        doc_bm25=doc_scores,
        doc_bm25_rank=doc_ranks,
        doc_names=names,
    )


def fused_chunks(q: QueryData, fusion: str, alpha: float, depth: int) -> tuple[cv.Ints, cv.Floats]:
    """The top `CHUNK_K` fused chunks (item indices, best first) and every item's fused score."""
    inside, fused = cv.fuse_arrays(
        q.dense, q.dense_rank, q.bm25, q.bm25_rank, method=fusion, alpha=alpha, depth=depth
    )
    idx = np.flatnonzero(inside)
    return idx[cv.chunk_order(fused[idx], q.tie[idx])][:CHUNK_K], fused


def doc_ranking(q: QueryData, order: cv.Ints, fused: cv.Floats, setting: Setting) -> cv.Ints:
    """Local doc indices, best first, of `order`'s chunks under the setting's aggregation."""
    if setting.aggregation == "max":
        return cv.docs_in_order(order, q.chunk_docs)
    docs = q.chunk_docs[order]
    tie = np.full(q.n_docs, 10**9, dtype=np.int64)
    np.minimum.at(tie, docs, np.arange(len(order), dtype=np.int64))
    if setting.aggregation == "decay":
        scores = cv.aggregate_decayed(
            fused[order], docs, q.n_docs, weight=setting.agg_weight, decay=DECAY
        )
        return cv.docs_by_score(scores, tie)
    if setting.aggregation == "docbm25":
        present = (q.doc_bm25_rank >= 0) & (q.doc_bm25_rank < setting.candidates)
        field = np.zeros(q.n_docs)
        field[present] = cv.normalise(q.doc_bm25[present], q.doc_bm25_rank[present], setting.fusion)
        tie = np.where(tie < 10**9, tie, 10**6 + np.where(present, q.doc_bm25_rank, 10**6))
        scores = cv.add_doc_field(
            cv.aggregate_max(fused[order], docs, q.n_docs), field, present, setting.agg_weight
        )
        return cv.docs_by_score(scores, tie)
    raise ValueError(f"unknown aggregation {setting.aggregation!r}")


def measure(q: QueryData, ranking: cv.Ints) -> tuple[float, float, float]:
    gains = q.gains[ranking]
    relevant = int((q.ideal > 0).sum())
    return (
        cv.ndcg_at_k(gains, q.ideal, K),
        cv.recall_at_k(gains, relevant, 100),
        cv.mrr_at_k(gains, K),
    )


def retrieval_grid() -> list[Setting]:
    return [
        Setting(m, a, c, agg, w)
        for m, a, c in itertools.product(METHODS, ALPHAS, DEPTHS)
        for agg, w in AGGREGATIONS
    ]


def rerank_grid() -> list[Setting]:
    fusions = list(itertools.product(METHODS, RERANK_ALPHAS, RERANK_CANDIDATES))
    plain = [Setting(m, a, c) for m, a, c in fusions]
    reranked = [
        Setting(m, a, c, rerank_depth=d, rerank_weight=w)
        for m, a, c in fusions
        for d, w in itertools.product(RERANK_DEPTHS, RERANK_WEIGHTS)
    ]
    return plain + reranked


def score_grid(
    settings: Sequence[Setting],
    data: Mapping[str, QueryData],
    rerank: Mapping[str, Mapping[str, float]] | None = None,
    on_progress: Callable[[], None] | None = None,
) -> dict[str, cv.Floats]:
    """Per-query metrics: metric -> (settings x queries) matrix, queries in `data` order."""
    qids = list(data)
    out = {m: np.zeros((len(settings), len(qids))) for m in METRICS}
    groups: dict[tuple[str, float, int], list[int]] = {}
    for i, s in enumerate(settings):
        groups.setdefault((s.fusion, s.alpha, s.candidates), []).append(i)
    for (fusion, alpha, depth), members in groups.items():
        for j, qid in enumerate(qids):
            q = data[qid]
            order, fused = fused_chunks(q, fusion, alpha, depth)
            for i in members:
                s = settings[i]
                chunks = order
                if s.rerank_depth:
                    assert rerank is not None
                    own = rerank[qid]
                    values = np.asarray([own.get(c, math.nan) for c in q.ids])
                    chunks = cv.rerank_order(order, fused, values, s.rerank_depth, s.rerank_weight)
                ranking = doc_ranking(q, chunks, fused, s)
                for metric, value in zip(METRICS, measure(q, ranking), strict=True):
                    out[metric][i, j] = value
            if on_progress is not None:
                on_progress()
    return out


def rankings_of(setting: Setting, data: Mapping[str, QueryData]) -> dict[str, list[str]]:
    """Doc rankings of a max-aggregated, not reranked setting (for the `ranx` cross-check)."""
    out = {}
    for qid, q in data.items():
        order, _ = fused_chunks(q, setting.fusion, setting.alpha, setting.candidates)
        out[qid] = docs_by_best_chunk(q.doc_names[q.chunk_docs[i]] for i in order)
    return out


def rounded(value: float) -> float:
    return round(float(value), 4)


def study(
    name: str,
    settings: Sequence[Setting],
    metrics: Mapping[str, cv.Floats],
    qids: Sequence[str],
    default: Setting,
    *,
    n_folds: int,
    seed: int,
) -> dict[str, Any]:
    """Per-setting mean ± sd over folds, the nested CV of each rule, and the final choices."""
    folds = cv.kfold(qids, n_folds, seed)
    where = cv.fold_index(qids, folds)
    per_fold = cv.fold_means(metrics["ndcg@10"], where, n_folds)
    means, sds = cv.mean_sd(per_fold)
    wins = cv.fold_wins(per_fold)
    recall = metrics["recall@100"].mean(axis=1)
    mrr = metrics["mrr@10"].mean(axis=1)
    d = settings.index(default)
    rows = [
        {
            **asdict(s),
            "label": s.label(),
            "ndcg@10_mean": rounded(means[i]),
            "ndcg@10_sd": rounded(sds[i]),
            "ndcg@10_folds": [rounded(v) for v in per_fold[i]],
            "fold_wins": int(wins[i]),
            "recall@100": rounded(recall[i]),
            "mrr@10": rounded(mrr[i]),
        }
        for i, s in enumerate(settings)
    ]
    rules: dict[str, Any] = {}
    for rule_name, rule in cv.RULES.items():
        choices = cv.nested_cv(metrics["ndcg@10"], where, n_folds, rule)
        held = [c.held_out for c in choices]
        final = rule(per_fold)
        rules[rule_name] = {
            "folds": [
                {
                    "fold": c.fold,
                    "chosen": settings[c.chosen].label(),
                    "train_mean": rounded(c.train_mean),
                    "held_out": rounded(c.held_out),
                    "default_held_out": rounded(per_fold[d, c.fold]),
                }
                for c in choices
            ],
            "held_out_mean": rounded(float(np.mean(held))),
            "held_out_sd": rounded(float(np.std(held, ddof=1))),
            "final_choice": rows[final],
        }
    default_folds = per_fold[d]
    return {
        "study": name,
        "queries": len(qids),
        "folds": n_folds,
        "seed": seed,
        "fold_sizes": [len(f) for f in folds],
        "settings": len(settings),
        "default": rows[d],
        "default_held_out_mean": rounded(float(default_folds.mean())),
        "default_held_out_sd": rounded(float(default_folds.std(ddof=1))),
        "rules": rules,
        "rows": rows,
    }


def reranker_training_queries(dataset: Dataset, args: argparse.Namespace) -> set[str]:
    """The queries `ragstream train-reranker` with these selection flags trained on."""
    if args.reranker_train_all:
        return set(dataset.queries)
    if args.reranker_train_fold is not None:
        from ragstream.evaluation.embedder_training import training_split

        ids = list(dataset.queries)
        return set(training_split(ids, folds=args.folds, fold=args.reranker_train_fold,
                                  seed=args.cv_seed).train)  # fmt: skip
    if (
        args.reranker_train_max_docs is None
        and args.reranker_train_max_queries is None
        and (args.reranker_train_half is None)
    ):
        return set()
    chosen = select(
        dataset,
        max_docs=args.reranker_train_max_docs,
        max_queries=args.reranker_train_max_queries,
        half=cast(Half | None, args.reranker_train_half),
        seed=args.reranker_train_seed,
    )
    return set(chosen.queries)


def rerank_pool(settings: Sequence[Setting], data: Mapping[str, QueryData]) -> dict[str, set[str]]:
    """Per query, every chunk a reranked setting scores (the union of their heads)."""
    pool: dict[str, set[str]] = {q: set() for q in data}
    heads: dict[tuple[str, float, int], int] = {}
    for s in settings:
        if s.rerank_depth:
            key = (s.fusion, s.alpha, s.candidates)
            heads[key] = max(heads.get(key, 0), s.rerank_depth)
    for qid, q in data.items():
        for (fusion, alpha, depth), head in heads.items():
            order, _ = fused_chunks(q, fusion, alpha, depth)
            pool[qid].update(q.ids[i] for i in order[:head])
    return pool


def in_family(setting: Setting, family: str) -> bool:
    return setting.aggregation in ("max", family)


def _bar(err: Console, label: str) -> Callable[[int], Callable[[], None]]:
    """A progress bar started when the work's size is known (nothing shown when all cached)."""

    def start(total: int) -> Callable[[], None]:
        progress = progress_bar(err)
        progress.start()
        task = progress.add_task(label, total=total)

        def advance() -> None:
            progress.advance(task)
            if progress.tasks[0].finished:
                progress.stop()

        return advance

    return start


def run_cv(args: argparse.Namespace, out: Console, err: Console) -> int:
    from services.retriever.settings import RetrieverSettings

    quiet_logs()
    dataset = load_selected(args)
    embedder = load_embedder()
    info = build_index(args, dataset, embedder, err)
    depth = max(DEPTHS)
    lists = cached_lists(dataset, info, embedder, depth, on_start=_bar(err, "reading lists"))
    docs = doc_bm25(dataset, depth)
    doc_of = {c: v[0] for c, v in lists.chunks.items()}
    data = {
        q: prepare(dataset.qrels[q], lists.dense[q], lists.bm25[q], docs[q], doc_of)
        for q in dataset.queries
    }
    retriever = RetrieverSettings()
    default = Setting(retriever.fusion, retriever.alpha, retriever.candidates)
    grid = retrieval_grid()
    if default not in grid:
        grid.append(default)
    with progress_bar(err) as progress:
        groups = len({(s.fusion, s.alpha, s.candidates) for s in grid})
        task = progress.add_task("scoring grid", total=len(data) * groups)
        metrics = score_grid(grid, data, on_progress=lambda: progress.advance(task))
    qids = list(data)
    check = evaluate(dataset.qrels, rankings_of(default, data), ["ndcg@10", "recall@100"])

    def part(name: str, keep: Callable[[Setting], bool]) -> dict[str, Any]:
        idx = [i for i, s in enumerate(grid) if keep(s)]
        return study(
            name,
            [grid[i] for i in idx],
            {m: v[idx] for m, v in metrics.items()},
            qids,
            default,
            n_folds=args.folds,
            seed=args.cv_seed,
        )

    result: dict[str, Any] = {
        "dataset": dataset.name,
        "split": args.split,
        "queries": len(qids),
        "docs": len(dataset.corpus),
        "chunks": info.chunks,
        "index": info.key,
        "embedding": embedding_summary(),
        "list_depth": depth,
        "chunk_k": CHUNK_K,
        "decay": DECAY,
        "ranx_check": {
            "setting": default.label(),
            "ranx": check,
            "numpy_ndcg@10": rounded(metrics["ndcg@10"][grid.index(default)].mean()),
        },
        "fusion": part("fusion (max-chunk, as served)", lambda s: s.aggregation == "max"),
        "retrieval": part("fusion + aggregation", lambda s: True),
        "aggregation": {
            family: brief(part(family, functools.partial(in_family, family=family)))
            for family in ("decay", "docbm25")
        },
    }
    if args.reranker_model:
        result["rerank"] = rerank_study(
            args, dataset=dataset, data=data, info=info, lists=lists, default=default, err=err
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print_tables(result, err, top=args.top)
    summary = {k: v for k, v in result.items() if k not in STUDIES}
    for name in STUDIES:
        if name in result:
            summary[name] = brief(result[name])
    out.print(json.dumps(summary), soft_wrap=True, markup=False, highlight=False)
    return 0


def rerank_study(
    args: argparse.Namespace,
    *,
    dataset: Dataset,
    data: Mapping[str, QueryData],
    info: IndexInfo,
    lists: Lists,
    default: Setting,
    err: Console,
) -> dict[str, Any]:
    """The rerank grid, on the queries the reranker was not trained on (a seeded sample of
    them with `--rerank-max-queries`)."""
    from services.reranker.settings import RerankerSettings

    base = RerankerSettings()
    settings = base.model_copy(
        update={
            "backend": "cross-encoder",
            "model": args.reranker_model,
            "runtime": args.reranker_runtime,
            "onnx_precision": args.reranker_precision,
        }
    )
    trained = reranker_training_queries(dataset, args)
    held = {q: v for q, v in data.items() if q not in trained}
    if args.rerank_max_queries is not None:
        sample = set(
            sorted(held, key=lambda q: cv.hash_key(q, args.cv_seed))[: args.rerank_max_queries]
        )
        held = {q: v for q, v in held.items() if q in sample}
    grid = rerank_grid()
    reranked = Setting(
        default.fusion,
        default.alpha,
        default.candidates,
        rerank_depth=base.depth,
        rerank_weight=base.fused_weight,
    )
    grid += [s for s in (reranked, default) if s not in grid]
    pool = rerank_pool(grid, held)
    scores = cached_rerank_scores(
        info, dataset.queries, pool, lists, settings, on_start=_bar(err, "reranking")
    )
    with progress_bar(err) as progress:
        groups = len({(s.fusion, s.alpha, s.candidates) for s in grid})
        task = progress.add_task("scoring rerank grid", total=len(held) * groups)
        metrics = score_grid(grid, held, scores, lambda: progress.advance(task))
    qids = list(held)
    plain = study("no rerank", grid, metrics, qids, default, n_folds=args.folds, seed=args.cv_seed)
    on = [i for i, s in enumerate(grid) if s.rerank_depth]
    when_on = study(
        "rerank on",
        [grid[i] for i in on],
        {m: v[on] for m, v in metrics.items()},
        qids,
        reranked,
        n_folds=args.folds,
        seed=args.cv_seed,
    )
    return {
        "model": args.reranker_model,
        "runtime": args.reranker_runtime,
        "precision": args.reranker_precision,
        "excluded_training_queries": len(trained),
        "pairs_scored": sum(len(v) for v in pool.values()),
        "without_rerank_default": plain["default"],
        "without_rerank_default_held_out_mean": plain["default_held_out_mean"],
        "rerank_on": brief(when_on),
        **study("rerank", grid, metrics, qids, reranked, n_folds=args.folds, seed=args.cv_seed),
    }


def brief(part: Mapping[str, Any]) -> dict[str, Any]:
    """A study without its per-setting rows."""
    keep = {k: v for k, v in part.items() if k != "rows"}
    keep["rules"] = {
        name: {**r, "final_choice": r["final_choice"]["label"]} for name, r in part["rules"].items()
    }
    keep["default"] = part["default"]["label"]
    return keep


def _pm(row: Mapping[str, Any]) -> str:
    return f"{row['ndcg@10_mean']:.4f} ± {row['ndcg@10_sd']:.4f}"


def print_tables(result: Mapping[str, Any], console: Console, *, top: int) -> None:
    for part in STUDIES:
        if part not in result:
            continue
        s = result[part]
        rows = sorted(s["rows"], key=lambda r: -r["ndcg@10_mean"])
        table = Table(
            title=f"{result['dataset']} {part}: {s['queries']} queries, {s['folds']} "
            f"folds, nDCG@10 mean ± sd over folds (top {top}, then the default)"
        )
        for column in ("setting", "nDCG@10", "folds", "wins", "R@100", "MRR@10"):
            table.add_column(column)
        shown = rows[:top] + ([s["default"]] if s["default"] not in rows[:top] else [])
        for r in shown:
            mark = " (default)" if r["label"] == s["default"]["label"] else ""
            table.add_row(
                r["label"] + mark,
                _pm(r),
                " ".join(f"{v:.3f}" for v in r["ndcg@10_folds"]),
                str(r["fold_wins"]),
                f"{r['recall@100']:.4f}",
                f"{r['mrr@10']:.4f}",
            )
        console.print(table)
        folds = Table(
            title=f"{result['dataset']} {part}: choice per fold (picked on the other "
            "folds, nDCG@10 on the held-out fold)"
        )
        for column in ("rule", "fold", "chosen", "train", "held-out", "default held-out"):
            folds.add_column(column)
        for name, rule in s["rules"].items():
            for f in rule["folds"]:
                folds.add_row(
                    name,
                    str(f["fold"]),
                    f["chosen"],
                    f"{f['train_mean']:.4f}",
                    f"{f['held_out']:.4f}",
                    f"{f['default_held_out']:.4f}",
                )
            folds.add_row(
                name,
                "mean",
                "final: " + rule["final_choice"]["label"],
                "",
                f"{rule['held_out_mean']:.4f} ± {rule['held_out_sd']:.4f}",
                f"{s['default_held_out_mean']:.4f} ± {s['default_held_out_sd']:.4f}",
            )
        console.print(folds)
    if "aggregation" in result:
        print_aggregation(result, console)


def print_aggregation(result: Mapping[str, Any], console: Console) -> None:
    """Chunk -> doc aggregation: each variant at the default fusion, and the held-out score of
    a CV choice allowed that family (plus max) against max-chunk alone."""
    s = result["retrieval"]
    d = s["default"]
    table = Table(
        title=f"{result['dataset']}: chunk -> doc aggregation at the default fusion "
        f"({result['ranx_check']['setting']}), nDCG@10 mean ± sd over folds"
    )
    for column in ("aggregation", "nDCG@10", "folds", "R@100"):
        table.add_column(column)
    for r in s["rows"]:
        if (r["fusion"], r["alpha"], r["candidates"]) == (d["fusion"], d["alpha"], d["candidates"]):
            name = r["aggregation"] + (f" {r['agg_weight']:g}" if r["aggregation"] != "max" else "")
            table.add_row(
                name,
                _pm(r),
                " ".join(f"{v:.3f}" for v in r["ndcg@10_folds"]),
                f"{r['recall@100']:.4f}",
            )
    console.print(table)
    held = Table(
        title=f"{result['dataset']}: nested CV (chosen on 4 folds, nDCG@10 on the 5th, "
        "mean ± sd over the 5) by the grid the choice may use"
    )
    for column in ("grid", "settings", "rule", "held-out", "final choice"):
        held.add_column(column)
    families = {
        "max only": result["fusion"],
        **{f"max + {k}": v for k, v in result["aggregation"].items()},
        "all": result["retrieval"],
    }
    for name, part in families.items():
        for rule in ("best_mean", "stable"):
            r = part["rules"][rule]
            final = r["final_choice"]
            held.add_row(
                name,
                str(part["settings"]),
                rule,
                f"{r['held_out_mean']:.4f} ± {r['held_out_sd']:.4f}",
                final if isinstance(final, str) else final["label"],
            )
    console.print(held)
