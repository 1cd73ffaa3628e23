"""Cross-validated choice of retrieval settings: pure functions, no index, no model.

The pieces `ragstream evaluate-cv` puts together:

* **Folds** — `kfold`: the query ids ordered by ``sha256(f"{seed}:{id}")`` and dealt round-robin
  into `n` folds: deterministic for a seed, independent of file order, disjoint, complete, and
  fold sizes differ by at most one.
* **Scores offline** — `fuse_arrays` is the store's `shared.store.fusion.fuse` in numpy over one
  query's cached dense and BM25 lists (read once, `candidates` deep at most), so every (method,
  alpha, candidates) setting is scored without querying again. Chunk -> doc aggregation:
  `aggregate_max` (the serving path: each doc at its best chunk), `aggregate_decayed` (max plus a
  decayed sum of the doc's other chunks) and `add_doc_field` (a whole-document BM25 score fused
  in beside the chunk fields). `rerank_order` is the reranker's depth + blend over cached
  cross-encoder scores. `ndcg_at_k`, `recall_at_k`, `mrr_at_k` score one doc ranking.
* **Cross-validation** — a (settings x queries) matrix of per-query scores, a fold per query:
  `fold_means` (settings x folds), `mean_sd` (mean and sample sd over the folds),
  `nested_cv`: for each fold, a choice rule picks a setting from the *other* folds' means and
  the pick is measured on the held-out fold (the CV estimate of the rule's quality on unseen
  queries).
* **Choice rules** (each gets a settings x folds matrix, returns a setting index):
  - `choose_best_mean`: the highest mean over the folds (ties: first in grid order).
  - `choose_stable` (the default rule, "paired one-sd, then least regret"): the candidates are
    the settings `near_best` — whose mean deficit to the best-mean setting is at most the sd over
    the folds of that deficit (fold by fold, on the same queries: the folds cannot tell them from
    the best); among them the one whose worst fold is closest to that fold's best setting
    (smallest max regret: never far behind, whichever queries come); ties: higher mean, then
    grid order.
  - `choose_near_lowest_sd` (for comparison): the same candidates, the lowest sd of the fold
    means wins. `choose_one_sd_raw` (for comparison): candidates within the best setting's own
    sd of the best mean, lowest sd wins. Both measured poorly: fold means differ mostly by how
    hard each fold's queries are (the same for every setting), so the raw band is wide (on
    SciFact it takes in settings 0.02 below the best) and a low sd over folds mostly means
    doing worse on the easy fold, not being more stable.
  - `choose_most_wins`: the setting that is best on the most folds (ties: higher mean, then grid
    order).
"""

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

RRF_K = 60
TINY = 1e-12
Floats = NDArray[np.float64]
Ints = NDArray[np.int64]
Rule = Callable[[Floats], int]


# ---- folds -----------------------------------------------------------------------------------


def kfold(query_ids: Sequence[str], n_folds: int = 5, seed: int = 0) -> list[list[str]]:
    """`n_folds` disjoint folds covering every (distinct) id, by a seeded hash of the id."""
    ids = sorted(set(query_ids))
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    if len(ids) < n_folds:
        raise ValueError(f"{len(ids)} queries cannot make {n_folds} folds")
    order = sorted(ids, key=lambda q: hash_key(q, seed))
    return [order[i::n_folds] for i in range(n_folds)]


def hash_key(query_id: str, seed: int) -> tuple[str, str]:
    """The sort key folds deal ids by: a seeded hash, then the id."""
    return hashlib.sha256(f"{seed}:{query_id}".encode()).hexdigest(), query_id


def fold_index(query_ids: Sequence[str], folds: Sequence[Sequence[str]]) -> Ints:
    """The fold of each of `query_ids` (in that order)."""
    where = {q: f for f, fold in enumerate(folds) for q in fold}
    return np.asarray([where[q] for q in query_ids], dtype=np.int64)


# ---- cross-validation over a settings x queries score matrix ---------------------------------


def fold_means(scores: Floats, folds: Ints, n_folds: int) -> Floats:
    """(settings x queries) per-query scores -> (settings x folds) mean score of each fold."""
    scores = np.asarray(scores, dtype=np.float64)
    out = np.empty((scores.shape[0], n_folds))
    for f in range(n_folds):
        members = folds == f
        if not members.any():
            raise ValueError(f"fold {f} is empty")
        out[:, f] = scores[:, members].mean(axis=1)
    return out


def mean_sd(per_fold: Floats) -> tuple[Floats, Floats]:
    """Mean and sample standard deviation (ddof=1) of each row over the folds."""
    per_fold = np.asarray(per_fold, dtype=np.float64)
    return per_fold.mean(axis=1), per_fold.std(axis=1, ddof=1)


def _best_of(indices: Sequence[int], means: Floats, key: Floats | None = None) -> int:
    """The first of `indices` by (lowest `key` if given, then) highest mean, then grid order."""
    if key is None:
        return min(indices, key=lambda i: (-means[i], i))
    return min(indices, key=lambda i: (round(float(key[i]), 12), -means[i], i))


def choose_best_mean(per_fold: Floats) -> int:
    means, _ = mean_sd(per_fold)
    return _best_of(range(len(means)), means)


def near_best(per_fold: Floats) -> list[int]:
    """Settings whose mean deficit to the best-mean one is within one sd (over the folds) of
    their fold-by-fold deficit: those the folds cannot tell from the best (the best included)."""
    per_fold = np.asarray(per_fold, dtype=np.float64)
    best = choose_best_mean(per_fold)
    deficit = per_fold[best] - per_fold
    gap, spread = mean_sd(deficit)
    return [i for i in range(len(per_fold)) if gap[i] <= spread[i] + TINY]


def fold_regret(per_fold: Floats) -> Floats:
    """Each setting's largest shortfall, over the folds, behind that fold's best setting."""
    per_fold = np.asarray(per_fold, dtype=np.float64)
    return np.asarray((per_fold.max(axis=0, keepdims=True) - per_fold).max(axis=1))


def choose_stable(per_fold: Floats) -> int:
    """Among the settings `near_best`, the one with the smallest `fold_regret`."""
    means, _ = mean_sd(per_fold)
    return _best_of(near_best(per_fold), means, key=fold_regret(per_fold))


def choose_near_lowest_sd(per_fold: Floats) -> int:
    """Among the settings `near_best`, the one with the lowest sd of its fold means."""
    means, sds = mean_sd(per_fold)
    return _best_of(near_best(per_fold), means, key=sds)


def choose_one_sd_raw(per_fold: Floats) -> int:
    """Among the settings within the best one's sd of the best mean, the lowest sd."""
    means, sds = mean_sd(per_fold)
    best = choose_best_mean(per_fold)
    near = [i for i in range(len(means)) if means[i] >= means[best] - sds[best] - TINY]
    return _best_of(near, means, key=sds)


def choose_most_wins(per_fold: Floats) -> int:
    per_fold = np.asarray(per_fold, dtype=np.float64)
    wins = fold_wins(per_fold)
    means, _ = mean_sd(per_fold)
    return _best_of(range(len(means)), means, key=-wins.astype(np.float64))


def fold_wins(per_fold: Floats) -> Ints:
    """How many folds each setting is best on (ties on a fold go to the first in grid order)."""
    per_fold = np.asarray(per_fold, dtype=np.float64)
    winners = per_fold.argmax(axis=0)
    return np.bincount(winners, minlength=per_fold.shape[0]).astype(np.int64)


RULES: dict[str, Rule] = {
    "stable": choose_stable,
    "best_mean": choose_best_mean,
    "most_wins": choose_most_wins,
    "near_lowest_sd": choose_near_lowest_sd,
    "one_sd_raw": choose_one_sd_raw,
}


@dataclass(frozen=True, slots=True)
class FoldChoice:
    fold: int
    chosen: int
    """The setting the rule picked from the other folds."""
    train_mean: float
    """Its mean over the other folds' means."""
    held_out: float
    """Its mean score on this fold's queries."""


def nested_cv(scores: Floats, folds: Ints, n_folds: int, rule: Rule) -> list[FoldChoice]:
    """For each fold: `rule` on the other folds' (settings x folds) means, measured on it."""
    per_fold = fold_means(scores, folds, n_folds)
    out = []
    for f in range(n_folds):
        train = np.delete(per_fold, f, axis=1)
        chosen = rule(train)
        out.append(FoldChoice(f, chosen, float(train[chosen].mean()), float(per_fold[chosen, f])))
    return out


# ---- fusion in numpy (shared.store.fusion.fuse over cached lists) -----------------------------


def rank_by_score(scores: Floats, ids: Sequence[str]) -> Ints:
    """0-based rank of each item by (-score, id), the order `fuse` ranks a list in."""
    order = sorted(range(len(ids)), key=lambda i: (-float(scores[i]), ids[i]))
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[order] = np.arange(len(ids))
    return ranks


def normalise(scores: Floats, ranks: Ints, method: str) -> Floats:
    """One list's scores normalised as `fuse` does: zscore, minmax, or rrf (1/(60 + rank))."""
    scores = np.asarray(scores, dtype=np.float64)
    if method == "rrf":
        return 1.0 / (RRF_K + np.asarray(ranks, dtype=np.float64) + 1.0)
    if scores.size == 0:
        return scores
    if method == "zscore":
        std = float(scores.std())
        return (scores - scores.mean()) / std if std > TINY else np.zeros_like(scores)
    if method == "minmax":
        low, high = float(scores.min()), float(scores.max())
        return (scores - low) / (high - low) if high - low > TINY else np.zeros_like(scores)
    raise ValueError(f"unknown fusion method {method!r}")


def fuse_arrays(
    dense: Floats,
    dense_rank: Ints,
    bm25: Floats,
    bm25_rank: Ints,
    *,
    method: str,
    alpha: float,
    depth: int,
) -> tuple[NDArray[np.bool_], Floats]:
    """Fuse the top-`depth` of two lists over a union of items.

    Each item has a raw score and a 0-based rank per list (rank < 0: not in that list). Returns
    which items either list's top-`depth` holds, and the fused score of every item (meaningful
    where included): ``alpha * n(dense) + (1 - alpha) * n(bm25)``, an item missing from a list
    taking that list's minimum normalised score (0 for rrf) — as `fuse` computes it.
    """
    in_d = (dense_rank >= 0) & (dense_rank < depth)
    in_b = (bm25_rank >= 0) & (bm25_rank < depth)
    fused = np.zeros(len(dense), dtype=np.float64)
    for weight, inside, raw, ranks in (
        (alpha, in_d, dense, dense_rank),
        (1.0 - alpha, in_b, bm25, bm25_rank),
    ):
        values = normalise(raw[inside], ranks[inside], method)
        missing = float(values.min()) if method != "rrf" and values.size else 0.0
        column = np.full(len(dense), missing)
        column[inside] = values
        fused += weight * column
    return in_d | in_b, fused


def chunk_order(scores: Floats, tie: Ints) -> Ints:
    """Indices of the chunks by (-score, tie) — `tie` is each chunk id's rank in id order."""
    return np.lexsort((tie, -np.asarray(scores, dtype=np.float64))).astype(np.int64)


# ---- chunk -> doc aggregation ------------------------------------------------------------------


def docs_in_order(order: Ints, chunk_docs: Ints) -> Ints:
    """Docs (indices) by their best chunk in `order` (chunk indices best first): max-chunk."""
    docs = chunk_docs[order]
    _, first = np.unique(docs, return_index=True)
    return docs[np.sort(first)]


def aggregate_max(scores: Floats, chunk_docs: Ints, n_docs: int) -> Floats:
    """Each doc's score is its best chunk's (-inf for a doc without chunks)."""
    out = np.full(n_docs, -np.inf)
    np.maximum.at(out, chunk_docs, np.asarray(scores, dtype=np.float64))
    return out


def aggregate_decayed(
    scores: Floats, chunk_docs: Ints, n_docs: int, *, weight: float, decay: float
) -> Floats:
    """``max + weight * sum_j decay**(j-1) * (s_j - floor)`` over a doc's other chunks, best
    first (j = 1, 2, ...). `floor` is the lowest score of the list, so each extra chunk adds a
    non-negative amount whatever the score's scale (z-scores are negative below the mean); a
    doc's ordering by its best chunk is kept when `weight` is 0."""
    scores = np.asarray(scores, dtype=np.float64)
    best = aggregate_max(scores, chunk_docs, n_docs)
    if scores.size == 0 or weight == 0:
        return best
    order = np.lexsort((-scores, chunk_docs))  # by doc, best chunk first
    docs = chunk_docs[order]
    starts = np.r_[0, np.flatnonzero(docs[1:] != docs[:-1]) + 1]
    group_start = np.repeat(starts, np.diff(np.r_[starts, len(docs)]))
    rank = np.arange(len(docs)) - group_start
    extra = np.where(rank > 0, weight * decay ** np.maximum(rank - 1, 0), 0.0)
    shifted = scores[order] - scores.min()
    return best + np.bincount(docs, weights=extra * shifted, minlength=n_docs)


def add_doc_field(
    doc_scores: Floats, field: Floats, present: NDArray[np.bool_], weight: float
) -> Floats:
    """``doc score + weight * field``: a doc-level score (e.g. normalised whole-doc BM25) fused
    beside the chunk-aggregated one. Docs without a chunk score (-inf) but with a field value
    (`present`) enter at the lowest chunk-aggregated score; docs absent from the field get the
    field's lowest value."""
    doc_scores = np.asarray(doc_scores, dtype=np.float64).copy()
    finite = np.isfinite(doc_scores)
    if weight == 0 or not present.any():
        return doc_scores
    floor = float(doc_scores[finite].min()) if finite.any() else 0.0
    low = float(field[present].min())
    doc_scores[~finite & present] = floor
    values = np.where(present, field, low)
    return np.where(np.isfinite(doc_scores), doc_scores + weight * values, -np.inf)


def docs_by_score(doc_scores: Floats, tie: Ints) -> Ints:
    """Docs with a finite score, best first; ties by `tie` (lower first)."""
    keep = np.flatnonzero(np.isfinite(doc_scores))
    return keep[np.lexsort((tie[keep], -doc_scores[keep]))].astype(np.int64)


# ---- reranking over cached scores ---------------------------------------------------------------


def standardised(values: Floats) -> Floats:
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std())
    return (values - values.mean()) / std if std > TINY else np.zeros_like(values)


def rerank_order(
    fused_order: Ints, fused: Floats, rerank: Floats, depth: int, weight: float
) -> Ints:
    """The reranker stage's order: the first `depth` of `fused_order` by
    ``(1 - w) * z(rerank) + w * z(fused)`` (w = 0: rerank score alone), ties keeping the fused
    order; the rest below in fused order. `fused` and `rerank` are per-item (indexed by item)."""
    head, tail = fused_order[:depth], fused_order[depth:]
    if head.size == 0:
        return fused_order
    own = np.asarray(rerank, dtype=np.float64)[head]
    keys = (
        own
        if weight <= 0
        else ((1.0 - weight) * standardised(own) + weight * standardised(fused[head]))
    )
    return np.asarray(np.r_[head[np.argsort(-keys, kind="stable")], tail], dtype=np.int64)


# ---- metrics of one ranking --------------------------------------------------------------------


def ndcg_at_k(gains: Floats, ideal: Floats, k: int) -> float:
    """nDCG@k of a ranking: `gains` are the relevance of the ranked docs, best first; `ideal`
    every relevant doc's relevance (linear gain, log2 discount, as `ranx`'s ndcg)."""
    top = np.asarray(gains, dtype=np.float64)[:k]
    best = np.sort(np.asarray(ideal, dtype=np.float64))[::-1][:k]
    idcg = float((best / np.log2(np.arange(2, best.size + 2))).sum())
    if idcg <= 0:
        return 0.0
    return float((top / np.log2(np.arange(2, top.size + 2))).sum()) / idcg


def recall_at_k(gains: Floats, n_relevant: int, k: int) -> float:
    if n_relevant <= 0:
        return 0.0
    return float((np.asarray(gains)[:k] > 0).sum()) / n_relevant


def mrr_at_k(gains: Floats, k: int) -> float:
    hits = np.flatnonzero(np.asarray(gains)[:k] > 0)
    return 1.0 / (hits[0] + 1) if hits.size else 0.0
