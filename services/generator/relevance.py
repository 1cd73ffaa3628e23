"""When to abstain instead of answering: no context, or context too weakly related."""

from collections.abc import Sequence

from services.generator.settings import GeneratorSettings
from shared.contracts.queries import Candidate

ABSTAIN_TEXT = "Not found in the knowledge base."


def abstention_reason(candidates: Sequence[Candidate], settings: GeneratorSettings) -> str | None:
    """Why the generator should abstain before calling any backend, or None to answer.

    - no candidates;
    - some candidate has a rerank score, `min_rerank_score` is set and the best is below it;
    - no candidate has a rerank score (no reranker, or it degraded) and the best dense
      score is below `min_dense_score`. Candidates found by BM25 alone carry no dense
      score and are not judged by this rule.
    """
    if not candidates:
        return "no candidates"
    rerank_scores = [c.rerank_score for c in candidates if c.rerank_score is not None]
    if rerank_scores:
        best = max(rerank_scores)
        if settings.min_rerank_score is not None and best < settings.min_rerank_score:
            return f"best rerank score {best:.3f} < min_rerank_score {settings.min_rerank_score}"
        return None
    dense_scores = [c.dense_score for c in candidates if c.dense_score is not None]
    if dense_scores:
        best = max(dense_scores)
        if best < settings.min_dense_score:
            return f"best dense score {best:.3f} < min_dense_score {settings.min_dense_score}"
    return None


def says_not_found(text: str) -> bool:
    """Whether a generated answer is the model declining ("Not found in the knowledge base")."""
    return ABSTAIN_TEXT.lower().rstrip(".") in " ".join(text.lower().split())
