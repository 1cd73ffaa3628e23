"""The pure cross-validation functions of `ragstream evaluate-cv` (no index, no model)."""

import math
import random

import numpy as np
import pytest

from ragstream.evaluation import cross_validation as cv
from ragstream.evaluation.cv_command import Setting, prepare, score_grid
from services.reranker.reranking import blended
from shared.contracts.queries import Candidate
from shared.store.fusion import fuse

IDS = [f"q{i}" for i in range(103)]


# ---- folds -----------------------------------------------------------------------------------


def test_kfold_is_deterministic_disjoint_complete_and_balanced() -> None:
    folds = cv.kfold(IDS, 5, seed=7)
    assert folds == cv.kfold(list(reversed(IDS)), 5, seed=7)  # input order does not matter
    flat = [q for fold in folds for q in fold]
    assert sorted(flat) == sorted(IDS)  # complete
    assert len(flat) == len(set(flat))  # disjoint
    assert sorted(len(f) for f in folds) == [20, 20, 21, 21, 21]


def test_kfold_depends_on_the_seed_and_not_on_file_order() -> None:
    assert cv.kfold(IDS, 5, seed=0) != cv.kfold(IDS, 5, seed=1)
    # not simply dealt in file order
    assert cv.kfold(IDS, 5, seed=0)[0] != IDS[0::5]


def test_kfold_refuses_too_few() -> None:
    with pytest.raises(ValueError):
        cv.kfold(IDS, 1)
    with pytest.raises(ValueError):
        cv.kfold(["a", "b", "a"], 3)


def test_fold_index_follows_the_given_order() -> None:
    folds = [["b", "d"], ["a"], ["c"]]
    assert cv.fold_index(["a", "b", "c", "d"], folds).tolist() == [1, 0, 2, 0]


# ---- fold statistics and rules -----------------------------------------------------------------


def test_fold_means_and_sample_sd() -> None:
    scores = np.array([[1.0, 0.0, 0.5, 0.5], [0.2, 0.4, 0.6, 0.8]])
    folds = np.array([0, 0, 1, 1])
    per_fold = cv.fold_means(scores, folds, 2)
    assert per_fold.ravel().tolist() == pytest.approx([0.5, 0.5, 0.3, 0.7])
    means, sds = cv.mean_sd(per_fold)
    assert means.tolist() == pytest.approx([0.5, 0.5])
    assert sds.tolist() == pytest.approx([0.0, math.sqrt(0.08)])  # ddof=1: (0.2² * 2) / 1


def test_fold_means_refuses_an_empty_fold() -> None:
    with pytest.raises(ValueError):
        cv.fold_means(np.ones((1, 2)), np.array([0, 0]), 2)


# settings x folds
PER_FOLD = np.array(
    [
        [0.80, 0.60, 0.80, 0.80],  # 0: best mean (0.75), one bad fold
        [0.74, 0.72, 0.74, 0.74],  # 1: mean 0.735, never far behind (within one paired sd)
        [0.70, 0.70, 0.70, 0.70],  # 2: flat but clearly worse
        [0.80, 0.60, 0.80, 0.79],  # 3: almost 0
    ]
)


def test_best_mean_takes_the_highest_mean_first_on_ties() -> None:
    assert cv.choose_best_mean(PER_FOLD) == 0
    assert cv.choose_best_mean(np.array([[0.5, 0.5], [0.6, 0.4]])) == 0


def test_near_best_keeps_what_the_folds_cannot_tell_apart() -> None:
    # deficits to 0, fold by fold: 1: 0.06 -0.12 0.06 0.06 (mean 0.015 < sd); 2: 0.1 -0.1 0.1 0.1
    # (mean 0.05 < sd 0.1); 3: 0 0 0 0.01 (mean 0.0025 < sd 0.005)
    assert cv.near_best(PER_FOLD) == [0, 1, 2, 3]
    # a setting behind on every fold by the same amount is told apart (sd 0)
    consistent = np.vstack([PER_FOLD, PER_FOLD[0] - 0.01])
    assert 4 not in cv.near_best(consistent)
    assert cv.near_best(np.array([[0.8, 0.8], [0.7, 0.75]])) == [0]


def test_stable_prefers_the_least_worst_fold_regret_among_near() -> None:
    # 1's worst shortfall behind a fold's best is 0.06, 0's is 0.12 (fold 1)
    assert cv.choose_stable(PER_FOLD[[0, 1, 3]]) == 1
    # least regret and lowest sd disagree: 2 is flattest (sd 0.015) but 0.10 behind on fold 0
    per_fold = np.array(
        [[0.90, 0.60, 0.90, 0.90], [0.84, 0.74, 0.84, 0.84], [0.80, 0.80, 0.80, 0.83]]
    )
    assert cv.near_best(per_fold) == [0, 1, 2]
    assert cv.choose_stable(per_fold) == 1
    assert cv.choose_near_lowest_sd(per_fold) == 2
    # a setting with no bad fold but consistently behind is not near, so not chosen
    behind = np.array([[0.80, 0.80, 0.80], [0.70, 0.70, 0.70]])
    assert cv.choose_stable(behind) == 0


def test_lowest_sd_rules_and_most_wins() -> None:
    per_fold = np.array([[0.9, 0.5, 0.9], [0.75, 0.74, 0.76], [0.76, 0.6, 0.95]])
    assert cv.choose_near_lowest_sd(per_fold) == 1
    assert cv.choose_one_sd_raw(per_fold) == 1
    assert cv.fold_wins(per_fold).tolist() == [1, 1, 1]
    assert cv.choose_most_wins(per_fold) == 2  # tie on wins: higher mean (0.77 vs 0.767, 0.75)
    assert cv.choose_most_wins(np.array([[0.9, 0.1, 0.1], [0.2, 0.2, 0.2]])) == 1


def test_nested_cv_chooses_on_the_other_folds_and_measures_on_the_held_out_one() -> None:
    # setting 0 is great on fold 0 only, setting 1 fine everywhere
    scores = np.array([[1.0, 1.0, 0.2, 0.2, 0.2, 0.2], [0.6, 0.6, 0.6, 0.6, 0.6, 0.6]])
    folds = np.array([0, 0, 1, 1, 2, 2])
    choices = cv.nested_cv(scores, folds, 3, cv.choose_best_mean)
    # without fold 0, setting 1 wins and scores 0.6 there; elsewhere fold 0 pulls 0 up (0.6 vs
    # 0.6: tie -> the first, 0) and 0 scores 0.2 on the held-out fold
    assert [c.chosen for c in choices] == [1, 0, 0]
    assert [c.held_out for c in choices] == pytest.approx([0.6, 0.2, 0.2])
    assert [c.train_mean for c in choices] == pytest.approx([0.6, 0.6, 0.6])


# ---- fusion, aggregation, rerank, metrics --------------------------------------------------------


def _lists(rng: random.Random) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    ids = [f"c{i:03d}" for i in range(60)]
    dense = [(c, round(rng.uniform(0.1, 0.9), 3)) for c in rng.sample(ids, 40)]
    bm25 = [(c, round(rng.uniform(0.0, 20.0), 2)) for c in rng.sample(ids, 35)]
    dense.sort(key=lambda x: (-x[1], x[0]))
    bm25.sort(key=lambda x: (-x[1], x[0]))
    return dense, bm25


@pytest.mark.parametrize("method", ["zscore", "minmax", "rrf"])
@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("depth", [10, 25, 100])
def test_fuse_arrays_is_the_stores_fuse(method: str, alpha: float, depth: int) -> None:
    rng = random.Random(hash((method, alpha, depth)) % 1000)
    dense, bm25 = _lists(rng)
    q = prepare({}, dense, bm25, [], {c: "d" + c for c, _ in dense + bm25})
    inside, fused = cv.fuse_arrays(
        q.dense, q.dense_rank, q.bm25, q.bm25_rank, method=method, alpha=alpha, depth=depth
    )
    idx = np.flatnonzero(inside)
    mine = [q.ids[i] for i in idx[cv.chunk_order(fused[idx], q.tie[idx])]]
    expected = fuse(dense[:depth], bm25[:depth], method=method, alpha=alpha)  # type: ignore[arg-type]
    assert mine == [f.id for f in expected]
    scores = {q.ids[i]: fused[i] for i in idx}
    assert [scores[f.id] for f in expected] == pytest.approx([f.score for f in expected])


def test_docs_in_order_is_max_chunk() -> None:
    chunk_docs = np.array([0, 1, 0, 2, 1])
    assert cv.docs_in_order(np.array([2, 4, 0, 3, 1]), chunk_docs).tolist() == [0, 1, 2]
    assert cv.docs_in_order(np.array([3, 1, 0]), chunk_docs).tolist() == [2, 1, 0]


def test_aggregate_max_and_decayed_sum() -> None:
    scores = np.array([0.9, 0.5, 0.7, 0.1, 0.3])
    docs = np.array([0, 0, 0, 1, 1])
    assert cv.aggregate_max(scores, docs, 3).tolist() == [0.9, 0.3, -np.inf]
    decayed = cv.aggregate_decayed(scores, docs, 3, weight=0.5, decay=0.5)
    # doc 0: 0.9 + 0.5 * ((0.7 - 0.1) + 0.5 * (0.5 - 0.1)); doc 1: 0.3 + 0.5 * (0.1 - 0.1)
    assert decayed[:2].tolist() == pytest.approx([0.9 + 0.5 * (0.6 + 0.2), 0.3])
    assert decayed[2] == -np.inf
    same = cv.aggregate_decayed(scores, docs, 3, weight=0.0, decay=0.5)
    assert same.tolist() == cv.aggregate_max(scores, docs, 3).tolist()


def test_decayed_sum_can_lift_a_doc_with_many_good_chunks() -> None:
    scores = np.array([0.80, 0.78, 0.77, 0.76, 0.0])
    docs = np.array([0, 1, 1, 1, 2])
    assert cv.docs_by_score(cv.aggregate_max(scores, docs, 3), np.arange(3)).tolist()[:2] == [0, 1]
    lifted = cv.aggregate_decayed(scores, docs, 3, weight=0.1, decay=0.5)
    assert cv.docs_by_score(lifted, np.arange(3)).tolist()[:2] == [1, 0]


def test_add_doc_field() -> None:
    doc_scores = np.array([0.9, 0.4, -np.inf, -np.inf])
    field = np.array([0.0, 1.0, 0.5, 0.0])
    present = np.array([True, True, True, False])
    out = cv.add_doc_field(doc_scores, field, present, 0.5)
    # doc 2 has no chunk: it enters at the lowest chunk score (0.4); doc 3 stays out
    assert out.tolist() == pytest.approx([0.9, 0.9, 0.65, -np.inf])
    assert cv.add_doc_field(doc_scores, field, present, 0.0).tolist() == doc_scores.tolist()
    absent = cv.add_doc_field(
        np.array([0.5, 0.5]), np.array([0.2, 0.0]), np.array([True, False]), 1.0
    )
    assert absent.tolist() == pytest.approx([0.7, 0.7])  # absent: the field's lowest value


def test_docs_by_score_ties_and_missing() -> None:
    out = cv.docs_by_score(np.array([0.5, -np.inf, 0.5, 0.9]), np.array([5, 0, 1, 9]))
    assert out.tolist() == [3, 2, 0]


def test_rerank_order_head_only_and_blend_is_the_reranker_stages() -> None:
    order = np.array([3, 0, 2, 1, 4])  # fused order of 5 items
    fused = np.array([0.8, 0.2, 0.5, 0.9, 0.1])
    rerank = np.array([0.1, 5.0, 0.9, 0.3, 9.0])
    alone = cv.rerank_order(order, fused, rerank, depth=3, weight=0.0)
    assert alone.tolist() == [2, 3, 0, 1, 4]  # head 3, 0, 2 by rerank; the tail kept
    w = 0.6
    cands = [
        Candidate(
            chunk_id=str(i),
            doc_id=str(i),
            version=1,
            title="",
            text="x",
            char_start=0,
            char_end=1,
            fused_score=float(fused[i]),
        )
        for i in order[:3]
    ]
    keys = blended(cands, [float(rerank[i]) for i in order[:3]], w)
    expected = [int(order[:3][i]) for i in sorted(range(3), key=lambda i: -keys[i])]
    got = cv.rerank_order(order, fused, rerank, depth=3, weight=w)
    assert got.tolist()[:3] == expected and got.tolist()[3:] == [1, 4]


def test_metrics_of_one_ranking() -> None:
    gains = np.array([0.0, 1.0, 0.0, 1.0])
    ideal = np.array([1.0, 1.0, 1.0])
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert cv.ndcg_at_k(gains, ideal, 10) == pytest.approx(dcg / idcg)
    assert cv.ndcg_at_k(gains, ideal, 1) == 0.0
    assert cv.ndcg_at_k(np.array([1.0]), np.array([1.0]), 10) == 1.0
    assert cv.recall_at_k(gains, 3, 2) == pytest.approx(1 / 3)
    assert cv.mrr_at_k(gains, 10) == 0.5
    assert cv.mrr_at_k(gains, 1) == 0.0


def test_score_grid_max_setting_matches_fuse_then_best_chunk() -> None:
    rng = random.Random(3)
    dense, bm25 = _lists(rng)
    doc_of = {c: f"d{int(c[1:]) // 3}" for c, _ in dense + bm25}
    fused = fuse(dense[:25], bm25[:25], method="minmax", alpha=0.5)
    docs = list(dict.fromkeys(doc_of[f.id] for f in fused))
    qrels = {docs[2]: 1, docs[7]: 1}
    q = prepare(qrels, dense, bm25, [(docs[7], 3.0), (docs[0], 1.0)], doc_of)
    out = score_grid([Setting("minmax", 0.5, 25)], {"q": q})
    dcg = 1 / math.log2(4) + 1 / math.log2(9)
    assert out["ndcg@10"][0, 0] == pytest.approx(dcg / (1 + 1 / math.log2(3)))
    assert out["mrr@10"][0, 0] == pytest.approx(1 / 3)
    # the whole-doc field (docs[7] best in it) lifts docs[7] to the top
    lifted = score_grid([Setting("minmax", 0.5, 25, "docbm25", 1.0)], {"q": q})
    assert lifted["mrr@10"][0, 0] == 1.0
