"""The writer's bounded memory of the vectors it last wrote or read per doc."""

import numpy as np

from shared.recent_vectors import RecentVectors


def unit(n: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_holds_a_copy_per_text_and_replaces_a_docs_older_rows() -> None:
    recent = RecentVectors(10)
    vectors = unit(2)
    recent.put("a", 1, ["one", "two"], vectors)
    vectors[:] = 0  # the batch's matrix is reused: the cache holds its own copy
    known = recent.get("a")
    assert known is not None and known.rows_version == 1
    np.testing.assert_array_equal(known.vector("two"), unit(2)[1])
    assert known.vector("three") is None

    recent.put("a", 2, ["three"], unit(1, seed=1))
    known = recent.get("a")
    assert known is not None and known.rows_version == 2 and known.vector("one") is None
    assert len(recent) == 1


def test_drops_the_least_recently_used_docs_past_its_bound() -> None:
    recent = RecentVectors(5)
    recent.put("a", 1, ["a1", "a2"], unit(2))
    recent.put("b", 1, ["b1", "b2"], unit(2))
    assert recent.get("a") is not None  # a is now the most recently used
    recent.put("c", 1, ["c1", "c2"], unit(2))
    assert recent.get("b") is None and recent.get("a") is not None
    assert len(recent) == 4
    recent.put("huge", 1, [f"h{i}" for i in range(6)], unit(6))  # over the bound on its own
    assert recent.get("huge") is None and len(recent) == 4
    recent.forget("a")
    assert recent.get("a") is None and len(recent) == 2
    off = RecentVectors(0)
    off.put("a", 1, ["a1"], unit(1))
    assert off.get("a") is None and len(off) == 0
