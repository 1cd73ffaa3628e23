"""Score fusion of a dense and a BM25 ranked list into one ranking.

Each input is a sequence of ``(id, score)``, higher is better; order does not matter (both lists
are ranked by ``(-score, id)``, and a repeated id keeps its best score). Methods:

* ``zscore`` — each list normalised to zero mean / unit variance over its retrieved candidates;
* ``minmax`` — each list scaled to [0, 1] over its retrieved candidates;
  for both, fused = ``alpha * dense + (1 - alpha) * bm25``, and an item missing from one list gets
  that list's *minimum* normalised score (it ranked below everything the list retrieved). A list
  whose scores are all equal carries no ranking information and normalises to 0 everywhere.
* ``rrf`` — reciprocal rank fusion: ``alpha / (k + rank_dense) + (1 - alpha) / (k + rank_bm25)``
  with 1-based ranks; a missing item contributes 0 for that list.

Ties in the fused score are broken by id, so the output is deterministic.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.store.records import FusionMethod

RRF_K = 60
Scored = Sequence[tuple[str, float]]


@dataclass(frozen=True, slots=True)
class Fused:
    id: str
    score: float
    """The fused score (the ranking key)."""
    dense: float | None
    """The raw dense score, or None if the item was not in the dense list."""
    bm25: float | None
    """The raw BM25 score, or None if the item was not in the BM25 list."""


def fuse(
    dense: Scored,
    bm25: Scored,
    *,
    method: FusionMethod = "zscore",
    alpha: float = 0.5,
    rrf_k: int = RRF_K,
) -> list[Fused]:
    """Fuse two ranked lists; the result holds every id of either list, best first."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    d_ranked, b_ranked = _ranked(dense), _ranked(bm25)
    if method == "rrf":
        d_norm, d_missing = _rrf(d_ranked, rrf_k), 0.0
        b_norm, b_missing = _rrf(b_ranked, rrf_k), 0.0
    elif method in ("zscore", "minmax"):
        normalise = _zscore if method == "zscore" else _minmax
        d_norm, b_norm = normalise(d_ranked), normalise(b_ranked)
        d_missing = min(d_norm.values(), default=0.0)
        b_missing = min(b_norm.values(), default=0.0)
    else:
        raise ValueError(f"unknown fusion method {method!r}")
    d_raw, b_raw = dict(d_ranked), dict(b_ranked)
    fused = [
        Fused(
            id=key,
            score=alpha * d_norm.get(key, d_missing) + (1.0 - alpha) * b_norm.get(key, b_missing),
            dense=d_raw.get(key),
            bm25=b_raw.get(key),
        )
        for key in d_raw.keys() | b_raw.keys()
    ]
    fused.sort(key=lambda f: (-f.score, f.id))
    return fused


def _ranked(items: Iterable[tuple[str, float]]) -> list[tuple[str, float]]:
    """Best first, ties by id; the first (best) score of a repeated id wins."""
    ranked: list[tuple[str, float]] = []
    seen: set[str] = set()
    for key, score in sorted(items, key=lambda item: (-item[1], item[0])):
        if key not in seen:
            seen.add(key)
            ranked.append((key, float(score)))
    return ranked


def _rrf(ranked: Sequence[tuple[str, float]], k: int) -> dict[str, float]:
    return {key: 1.0 / (k + rank) for rank, (key, _) in enumerate(ranked, start=1)}


def _zscore(ranked: Sequence[tuple[str, float]]) -> dict[str, float]:
    if not ranked:
        return {}
    scores = [s for _, s in ranked]
    mean = math.fsum(scores) / len(scores)
    std = math.sqrt(math.fsum((s - mean) ** 2 for s in scores) / len(scores))
    if std <= 1e-12:
        return dict.fromkeys((key for key, _ in ranked), 0.0)
    return {key: (s - mean) / std for key, s in ranked}


def _minmax(ranked: Sequence[tuple[str, float]]) -> dict[str, float]:
    if not ranked:
        return {}
    low, high = ranked[-1][1], ranked[0][1]
    if high - low <= 1e-12:
        return dict.fromkeys((key for key, _ in ranked), 0.0)
    return {key: (s - low) / (high - low) for key, s in ranked}
