"""Fused candidates in, the top-n by reranker score out: the reranker stage's logic.

`rerank` never raises for a reranker's sake. When the backend fails (`RerankError`, or any
other exception), returns a wrong number of scores, or takes longer than the latency budget,
the candidates keep the retriever's fused order and `RerankOutcome.degraded` says why in one
line ("rerank timed out after 250 ms", "cohere rerank failed: HTTP 503 (...) after 3
attempts").
"""

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from shared import metrics
from shared.contracts.queries import Candidate, Query
from shared.deadlines import seconds_left
from shared.errors import RagStreamError
from shared.logging import get_logger

log = get_logger(__name__)

NO_RERANKER = "none"
MAX_REASON_CHARS = 300


class Reranker(Protocol):
    """Scores passages against a query; higher is more relevant. Scales differ by backend."""

    name: str

    async def score(self, query: str, passages: Sequence[str]) -> list[float]:
        """One score per passage, in the passages' order."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources (HTTP client, worker thread)."""
        ...


class RerankError(RagStreamError):
    """A reranker backend failed. The message is the one-line `degraded` reason."""

    def __init__(self, reason: str, *, transient: bool) -> None:
        super().__init__(one_line(reason))
        self.reason = one_line(reason)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class RerankOutcome:
    candidates: tuple[Candidate, ...]
    """The top-n, best first; `rerank_score` is set unless `degraded` (or no reranker)."""
    reranker: str
    """The backend's name, `none` without one."""
    degraded: str | None
    """Why the fused order was kept; None when the reranker's order is used (or no reranker)."""
    rerank_ms: float


def one_line(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` on a single line, cut to `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def passage_text(candidate: Candidate, max_chars: int) -> str:
    """What the reranker reads for a candidate: its title, a blank line, its text; cut."""
    title = candidate.title.strip()
    text = f"{title}\n\n{candidate.text}" if title else candidate.text
    return text[:max_chars]


def fused_order(candidates: Sequence[Candidate]) -> list[Candidate]:
    """By fused score, best first; ties keep the retriever's order."""
    return sorted(candidates, key=lambda c: -c.fused_score)


def order_by_scores(
    candidates: Sequence[Candidate], scores: Sequence[float], keys: Sequence[float] | None = None
) -> list[Candidate]:
    """Candidates with `rerank_score` set, best first by `keys` (default: the scores); ties
    keep the incoming order."""
    order = scores if keys is None else keys
    ranked = sorted(range(len(candidates)), key=lambda i: -order[i])
    return [candidates[i].model_copy(update={"rerank_score": float(scores[i])}) for i in ranked]


def _standardised(values: Sequence[float]) -> list[float]:
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / std if std > 1e-12 else 0.0 for v in values]


def blended(
    candidates: Sequence[Candidate], scores: Sequence[float], fused_weight: float
) -> list[float]:
    """Ranking keys ``(1 - w) * z(reranker) + w * z(fused)``, each z-scored over the list.

    The fused score keeps what the retriever knew (BM25 and dense agreeing); `w = 0` is the
    reranker's order alone.
    """
    fused = _standardised([c.fused_score for c in candidates])
    own = _standardised(scores)
    return [(1.0 - fused_weight) * r + fused_weight * f for r, f in zip(own, fused, strict=True)]


def _check_scores(scores: Sequence[float], expected: int, name: str) -> None:
    if len(scores) != expected:
        raise RerankError(
            f"{name} returned {len(scores)} scores for {expected} passages", transient=False
        )
    if not all(math.isfinite(s) for s in scores):
        raise RerankError(f"{name} returned a non-finite score", transient=False)


async def rerank(
    query: Query,
    candidates: Sequence[Candidate],
    reranker: Reranker | None,
    top_n: int,
    budget_ms: float | None,
    *,
    max_passage_chars: int = 2000,
    fused_weight: float = 0.0,
    depth: int | None = None,
) -> RerankOutcome:
    """The `top_n` candidates in the reranker's order, or in fused order if it cannot deliver.

    `budget_ms` bounds the whole `reranker.score` call (None: unbounded), and so does the time
    left before the query's `deadline`: the call is abandoned at whichever comes first (a local
    model then stops scoring, see `services.reranker.worker`). With `fused_weight`
    > 0 the order is that of `blended` reranker and fused scores (`rerank_score` stays the
    reranker's own). With `depth`, only the first `depth` fused candidates are scored (a
    cross-encoder's cost grows with every pair); the rest keep their fused order below them.
    """
    if top_n < 1:
        raise ValueError(f"top_n must be at least 1, got {top_n}")
    started = time.perf_counter()
    fused = fused_order(candidates)

    def outcome(ranked: Sequence[Candidate], degraded: str | None = None) -> RerankOutcome:
        return RerankOutcome(
            candidates=tuple(ranked[:top_n]),
            reranker=reranker.name if reranker is not None else NO_RERANKER,
            degraded=degraded,
            rerank_ms=(time.perf_counter() - started) * 1000,
        )

    if reranker is None or not fused:
        return outcome(fused)
    head, tail = (fused[:depth], fused[depth:]) if depth is not None else (fused, [])
    passages = [passage_text(c, max_passage_chars) for c in head]
    limit_ms, at_deadline = budget_ms, False
    if query.deadline is not None:
        left_ms = max(0.0, seconds_left(query.deadline) * 1000)
        if limit_ms is None or left_ms < limit_ms:
            limit_ms, at_deadline = left_ms, True
    try:
        async with asyncio.timeout(limit_ms / 1000 if limit_ms is not None else None):
            scores = await reranker.score(query.text, passages)
        _check_scores(scores, len(passages), reranker.name)
    except TimeoutError:
        if at_deadline:
            kind, reason = "deadline", f"rerank stopped at the query's deadline ({limit_ms:.0f} ms)"
        else:
            kind, reason = "timeout", f"rerank timed out after {budget_ms:g} ms"
    except RerankError as exc:
        kind, reason = "provider", exc.reason
    except Exception as exc:
        log.warning("rerank_error", query_id=query.query_id, reranker=reranker.name, exc_info=True)
        kind = "error"
        reason = one_line(f"{reranker.name} rerank failed: {type(exc).__name__}: {exc}")
    else:
        keys = blended(head, scores, fused_weight) if fused_weight > 0 else None
        return outcome([*order_by_scores(head, scores, keys), *tail])
    log.warning("rerank_degraded", query_id=query.query_id, reranker=reranker.name, reason=reason)
    metrics.rerank_degraded.labels(kind).inc()
    return outcome(fused, reason)
