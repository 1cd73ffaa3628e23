"""Citation markers in generated text: parse, drop the invalid, resolve to `Citation`s.

A marker group is `[n]`, `[n, m]` or `[n-m]` (a range of at most 20); `[1][2]` is two groups.
Numbers are 1-based positions in the candidate list the prompt was built from. Cleaning
rewrites every group as single markers (`[1, 3]` → `[1][3]`) and removes numbers that point
to no candidate; a group left empty is removed with the whitespace before it. Marker numbers
are kept, not renumbered, so `Citation.marker == n` for every `[n]` in the text.

Any bracketed number counts as a marker, including code such as `a[0]`: answers are prose.
"""

import re
from collections.abc import Sequence

from services.generator.lexical import Sentence, best_sentence, shorten, split_sentences
from shared.contracts.answers import Citation
from shared.contracts.queries import Candidate

_GROUP = re.compile(r"(\s*)\[\s*(\d{1,4}(?:\s*[-–,]\s*\d{1,4})*)\s*\]")
_OPEN_GROUP_TAIL = re.compile(r"\s*(?:\[[\d\s,\-–]*)?\Z")
_MAX_RANGE = 20
_MAX_HELD = 40
QUOTE_CHARS = 200


def _numbers(body: str) -> list[int]:
    numbers: list[int] = []
    for item in body.split(","):
        bounds = [int(part) for part in re.split(r"\s*[-–]\s*", item.strip()) if part]
        if len(bounds) == 1:
            numbers.append(bounds[0])
        elif len(bounds) == 2 and 0 <= bounds[1] - bounds[0] <= _MAX_RANGE:
            numbers.extend(range(bounds[0], bounds[1] + 1))
    return numbers


def parse_markers(text: str) -> list[int]:
    """Every marker number in `text`, first appearance first, without duplicates."""
    seen: dict[int, None] = {}
    for match in _GROUP.finditer(text):
        seen.update(dict.fromkeys(_numbers(match.group(2))))
    return list(seen)


def clean_markers(text: str, source_count: int) -> str:
    """Rewrite marker groups as `[n]` runs, dropping numbers outside `1..source_count`."""

    def rewrite(match: re.Match[str]) -> str:
        valid = dict.fromkeys(n for n in _numbers(match.group(2)) if 1 <= n <= source_count)
        if not valid:
            return ""
        return match.group(1) + "".join(f"[{n}]" for n in valid)

    return _GROUP.sub(rewrite, text)


def strip_markers(text: str) -> str:
    """`text` without any marker group (used on document text quoted into an answer)."""
    return _GROUP.sub("", text)


class MarkerFilter:
    """Cleans markers in a stream of text deltas, so the cleaned deltas add up to the answer.

    Text that may still become part of a marker group (an unclosed `[12, `) and trailing
    whitespace (which a dropped marker would take with it) are held back until the next delta
    decides them. Leading and trailing whitespace of the whole answer are dropped.
    """

    def __init__(self, source_count: int) -> None:
        self._source_count = source_count
        self._held = ""
        self._parts: list[str] = []

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._parts)

    def feed(self, delta: str) -> str:
        """Add a raw delta; return the cleaned text that is now safe to emit (maybe empty)."""
        self._held += delta
        tail = _OPEN_GROUP_TAIL.search(self._held)
        cut = tail.start() if tail is not None else len(self._held)
        if len(self._held) - cut > _MAX_HELD:
            cut = len(self._held)
        ready, self._held = self._held[:cut], self._held[cut:]
        return self._emit(clean_markers(ready, self._source_count))

    def flush(self) -> str:
        """End of stream: return the cleaned rest, without trailing whitespace."""
        rest, self._held = self._held, ""
        return self._emit(clean_markers(rest, self._source_count).rstrip())

    def _emit(self, cleaned: str) -> str:
        if not self._parts:
            cleaned = cleaned.lstrip()
        if cleaned:
            self._parts.append(cleaned)
        return cleaned


def _answer_sentences_citing(text: str, marker: int) -> str:
    token = f"[{marker}]"
    return " ".join(s.text for s in split_sentences(text) if token in s.text) or text


def quote_for(candidate: Candidate, context: str) -> str:
    """The chunk sentence best matching `context`, else the chunk's first ~200 characters."""
    sentences: list[Sentence] = split_sentences(candidate.text)
    best = best_sentence(strip_markers(context), sentences)
    chosen = best.text if best is not None else candidate.text
    return shorten(" ".join(chosen.split()), QUOTE_CHARS if best is None else 2 * QUOTE_CHARS)


def citation_for(marker: int, candidate: Candidate, quote: str) -> Citation:
    return Citation(
        marker=marker,
        chunk_id=candidate.chunk_id,
        doc_id=candidate.doc_id,
        version=candidate.version,
        title=candidate.title,
        char_start=candidate.char_start,
        char_end=candidate.char_end,
        quote=quote,
    )


def build_citations(text: str, candidates: Sequence[Candidate]) -> tuple[Citation, ...]:
    """One `Citation` per valid marker in (cleaned) `text`, in order of first appearance.

    The quote is the chunk sentence that best matches the answer sentences citing it.
    """
    citations: list[Citation] = []
    for marker in parse_markers(text):
        if 1 <= marker <= len(candidates):
            candidate = candidates[marker - 1]
            context = _answer_sentences_citing(text, marker)
            citations.append(citation_for(marker, candidate, quote_for(candidate, context)))
    return tuple(citations)
