"""Sentence spans and content terms: the lexical matching behind extractive answers and quotes."""

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_BOUNDARY = re.compile(
    # end punctuation (and any citation markers after it), then a capital or a digit
    r"""[.!?]+["')\]]*(?:\s*\[\d[\d\s,\-–]*\])*\s+(?=["'(]?[A-Z0-9])"""
    r"|\n\s*\n"  # a blank line
    r"|\n(?=\s*(?:[-*•]|\d+[.)])\s)"  # a line that starts a list item
)
_WORD = re.compile(r"\w+")
_STOPWORD_LIST = """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its
    itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    tell please much many
"""
_STOPWORDS = frozenset(_STOPWORD_LIST.split())


@dataclass(frozen=True, slots=True)
class Sentence:
    """A sentence of a text: its characters `text[start:end]`, stripped."""

    start: int
    end: int
    text: str


def split_sentences(text: str) -> list[Sentence]:
    """Split at sentence punctuation followed by a capital, blank lines and list items.

    Abbreviations ("Dr. Smith") split too; a decimal ("3.5") or a lowercase word does not.
    """
    sentences: list[Sentence] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        _append_span(text, start, match.start() + len(match.group().rstrip()), sentences)
        start = match.end()
    _append_span(text, start, len(text), sentences)
    return sentences


def _append_span(text: str, start: int, end: int, into: list[Sentence]) -> None:
    segment = text[start:end]
    stripped = segment.strip()
    if stripped:
        lead = len(segment) - len(segment.lstrip())
        into.append(Sentence(start + lead, start + lead + len(stripped), stripped))


def terms(text: str) -> set[str]:
    """Lowercased content words without stopwords; a trailing plural `s` is dropped."""
    found: set[str] = set()
    for word in _WORD.findall(text.lower()):
        if word in _STOPWORDS or (len(word) < 2 and not word.isdigit()):
            continue
        plural = len(word) > 3 and word.endswith("s") and not word.endswith("ss")
        found.add(word[:-1] if plural else word)
    return found


def idf_weights(documents: Iterable[set[str]]) -> dict[str, float]:
    """`log(1 + N/df)` for every term of `documents` (each a term set)."""
    counts: Counter[str] = Counter()
    total = 0
    for document in documents:
        counts.update(document)
        total += 1
    return {term: math.log(1 + total / df) for term, df in counts.items()}


def overlap(query: set[str], sentence: set[str], weights: dict[str, float]) -> float:
    """Summed weight of the query terms the sentence contains (unknown terms weigh 1)."""
    return sum(weights.get(term, 1.0) for term in query & sentence)


def best_sentence(query: str, sentences: Sequence[Sentence]) -> Sentence | None:
    """The sentence sharing the most weighted terms with `query`; None when none shares any."""
    query_terms = terms(query)
    sentence_terms = [terms(sentence.text) for sentence in sentences]
    weights = idf_weights(sentence_terms)
    best: Sentence | None = None
    best_score = 0.0
    for sentence, found in zip(sentences, sentence_terms, strict=True):
        score = overlap(query_terms, found, weights)
        if score > best_score:
            best, best_score = sentence, score
    return best


def squash(text: str) -> str:
    """Collapse runs of whitespace (newlines included) into single spaces."""
    return " ".join(text.split())


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters at a word boundary, with an ellipsis."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip() + "…"
