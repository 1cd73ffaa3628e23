"""The LLM-free backend: answer with the context sentences that best match the question.

Every sentence of every candidate is scored by the IDF-weighted question terms it contains
(IDF over the pooled sentences, so words every chunk shares weigh little), weighed by how much of
the question its chunk covers and by the chunk's retrieval rank: a sentence that shares two words
with the question in a chunk about something else ("Galileo discovered Jupiter's moons") should
not lead the answer to "Who discovered the moons of Mars?" when the top-ranked chunk is about
Mars. The best `max_sentences` scoring at least half the top score are returned best first, each
followed by the marker of its chunk. Ties go to the higher-ranked candidate, then the earlier
sentence: the result is deterministic.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

from services.generator.citations import citation_for, strip_markers
from services.generator.lexical import (
    Sentence,
    idf_weights,
    overlap,
    shorten,
    split_sentences,
    squash,
    terms,
)
from shared.contracts.answers import Citation
from shared.contracts.queries import Candidate

EXTRACTIVE_MODEL = "extractive"
_RELATIVE_CUTOFF = 0.5
_RANK_DECAY = 0.25
"""A candidate at retrieval rank r weighs 1 / (1 + r × this)."""
_SENTENCE_CHARS = 400


@dataclass(frozen=True)
class ExtractiveAnswer:
    parts: tuple[str, ...]
    """One part per chosen sentence, each ending with its marker: `"… tall [1]."`."""
    citations: tuple[Citation, ...]

    @property
    def text(self) -> str:
        return " ".join(self.parts)


@dataclass(frozen=True, slots=True)
class _Scored:
    score: float
    rank: int
    sentence: Sentence


def _with_marker(sentence: str, marker: int) -> str:
    body = sentence.rstrip(".!?")
    return f"{body} [{marker}]{sentence[len(body) :]}"


def _chunk_prior(question: set[str], text: str, rank: int, weights: dict[str, float]) -> float:
    """√(the share of the question's term weight the chunk covers), decayed by rank."""
    total = overlap(question, question, weights)
    coverage = overlap(question, terms(text), weights) / total if total else 0.0
    return math.sqrt(coverage) / (1 + rank * _RANK_DECAY)


def answer_extractively(
    question: str, candidates: Sequence[Candidate], *, max_sentences: int = 3
) -> ExtractiveAnswer | None:
    """The best-matching sentences with markers and citations; None if none shares a term."""
    question_terms = terms(question)
    pool = [
        (rank, sentence)
        for rank, candidate in enumerate(candidates)
        for sentence in split_sentences(candidate.text)
    ]
    pool_terms = [terms(sentence.text) for _, sentence in pool]
    weights = idf_weights(pool_terms)
    prior = [
        _chunk_prior(question_terms, candidate.text, rank, weights)
        for rank, candidate in enumerate(candidates)
    ]
    scored = [
        _Scored(overlap(question_terms, found, weights) * prior[rank], rank, sentence)
        for (rank, sentence), found in zip(pool, pool_terms, strict=True)
    ]
    scored = [s for s in scored if s.score > 0]
    if not scored:
        return None
    scored.sort(key=lambda s: (-s.score, s.rank, s.sentence.start))
    cutoff = scored[0].score * _RELATIVE_CUTOFF
    chosen = [s for s in scored if s.score >= cutoff][:max_sentences]

    parts: list[str] = []
    citations: dict[int, Citation] = {}
    for item in chosen:
        marker = item.rank + 1
        text = shorten(squash(strip_markers(item.sentence.text)), _SENTENCE_CHARS)
        parts.append(_with_marker(text, marker))
        if marker not in citations:
            citations[marker] = citation_for(marker, candidates[item.rank], text)
    return ExtractiveAnswer(parts=tuple(parts), citations=tuple(citations.values()))
