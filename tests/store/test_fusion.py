"""Score fusion: hand-checked cases, and min-max / RRF cross-checked against ranx."""

import math
import random

import pytest

from shared.store.fusion import Fused, fuse

DENSE = [("a", 3.0), ("b", 2.0), ("c", 1.0)]
BM25 = [("b", 10.0), ("d", 0.0)]


def scores(fused: list[Fused]) -> dict[str, float]:
    return {f.id: f.score for f in fused}


def test_zscore_by_hand() -> None:
    # dense: mean 2, std sqrt(2/3) -> a +1.2247, b 0, c -1.2247; bm25: mean 5, std 5 -> b +1, d -1.
    # Missing items get the list's minimum: d gets dense -1.2247, a and c get bm25 -1.
    fused = fuse(DENSE, BM25, method="zscore", alpha=0.5)
    z = math.sqrt(1.5)
    expected = {"a": 0.5 * z - 0.5, "b": 0.5, "c": -0.5 * z - 0.5, "d": -0.5 * z - 0.5}
    assert scores(fused) == pytest.approx(expected)
    assert [f.id for f in fused] == ["b", "a", "c", "d"]  # c and d tie: broken by id


def test_minmax_by_hand() -> None:
    fused = fuse(DENSE, BM25, method="minmax", alpha=0.5)
    assert scores(fused) == pytest.approx({"a": 0.5, "b": 0.75, "c": 0.0, "d": 0.0})
    assert [f.id for f in fused] == ["b", "a", "c", "d"]


def test_rrf_by_hand() -> None:
    fused = fuse(DENSE, BM25, method="rrf", alpha=0.5)
    expected = {"a": 0.5 / 61, "b": 0.5 / 62 + 0.5 / 61, "c": 0.5 / 63, "d": 0.5 / 62}
    assert scores(fused) == pytest.approx(expected)
    assert [f.id for f in fused] == ["b", "a", "d", "c"]
    assert scores(fuse(DENSE, BM25, method="rrf", rrf_k=0, alpha=1.0))["a"] == pytest.approx(1.0)


def test_raw_scores_are_kept() -> None:
    by_id = {f.id: f for f in fuse(DENSE, BM25)}
    assert (by_id["b"].dense, by_id["b"].bm25) == (2.0, 10.0)
    assert (by_id["a"].dense, by_id["a"].bm25) == (3.0, None)
    assert (by_id["d"].dense, by_id["d"].bm25) == (None, 0.0)


def test_alpha_extremes_follow_one_list() -> None:
    assert [f.id for f in fuse(DENSE, BM25, alpha=1.0)][:3] == ["a", "b", "c"]
    assert next(f.id for f in fuse(DENSE, BM25, alpha=0.0)) == "b"


def test_input_order_and_duplicates_do_not_matter() -> None:
    shuffled = [("c", 1.0), ("a", 3.0), ("b", 2.0), ("a", 0.5)]
    for method in ("zscore", "minmax", "rrf"):
        assert fuse(shuffled, BM25, method=method) == fuse(DENSE, BM25, method=method)


def test_degenerate_lists() -> None:
    assert fuse([], []) == []
    assert [f.id for f in fuse([], BM25)] == ["b", "d"]
    single = fuse([("x", 0.3)], [("x", 7.0)], method="zscore")  # no spread: normalises to 0
    assert [(f.id, f.score) for f in single] == [("x", 0.0)]
    ties = fuse([("b", 1.0), ("a", 1.0)], [], method="minmax")
    assert [f.id for f in ties] == ["a", "b"]


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="alpha"):
        fuse(DENSE, BM25, alpha=1.5)
    with pytest.raises(ValueError, match="method"):
        fuse(DENSE, BM25, method="borda")  # type: ignore[arg-type]


def _random_lists(seed: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    rng = random.Random(seed)
    ids = [f"d{i}" for i in range(40)]
    dense = [(i, rng.uniform(0.1, 0.9)) for i in rng.sample(ids, 25)]
    bm25 = [(i, rng.uniform(0.0, 30.0)) for i in rng.sample(ids, 20)]
    return dense, bm25


@pytest.mark.parametrize("seed", range(5))
def test_matches_ranx(seed: int) -> None:
    ranx = pytest.importorskip("ranx")
    dense, bm25 = _random_lists(seed)
    runs = [ranx.Run({"q": dict(dense)}), ranx.Run({"q": dict(bm25)})]

    # min-max + weighted sum: ranx also scores a missing item 0, which is each list's minimum.
    theirs = ranx.fuse(runs, norm="min-max", method="wsum", params={"weights": [0.3, 0.7]})
    ours = fuse(dense, bm25, method="minmax", alpha=0.3)
    assert scores(ours) == pytest.approx(dict(theirs["q"]))

    # RRF: ranx is unweighted, i.e. twice our alpha = 0.5 score.
    theirs = ranx.fuse(runs, norm=None, method="rrf", params={"k": 60})
    ours = fuse(dense, bm25, method="rrf", alpha=0.5)
    assert {k: 2 * v for k, v in scores(ours).items()} == pytest.approx(dict(theirs["q"]))
