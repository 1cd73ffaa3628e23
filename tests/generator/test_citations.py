import pytest

from services.generator.citations import (
    MarkerFilter,
    build_citations,
    clean_markers,
    parse_markers,
    strip_markers,
)

from . import EIFFEL, eiffel_candidates


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris [1].", [1]),
        ("A [2] and B [1].", [2, 1]),
        ("Both [1, 3].", [1, 3]),
        ("Both [1,3] and [ 2 ].", [1, 3, 2]),
        ("Adjacent [1][2].", [1, 2]),
        ("Range [2-4] and en dash [6–7].", [2, 3, 4, 6, 7]),
        ("Repeated [1] and [1] again [1, 1].", [1]),
        ("No markers here.", []),
        ("Not markers: [a], [1a], [], [1.5], (1).", []),
        ("Reversed range [5-2] is ignored.", []),
        ("Huge range [1-500] is ignored.", []),
    ],
)
def test_parse_markers(text: str, expected: list[int]) -> None:
    assert parse_markers(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Tall [1].", "Tall [1]."),
        ("Tall [1, 3].", "Tall [1][3]."),
        ("Tall [9].", "Tall."),
        ("Tall [0] and wide [4].", "Tall and wide."),
        ("Tall [2, 9].", "Tall [2]."),
        ("Tall [3][7][1].", "Tall [3][1]."),
        ("Tall [2-5].", "Tall [2][3]."),
        ("[5] Tall.", " Tall."),
    ],
)
def test_clean_markers_drops_numbers_without_a_source(text: str, expected: str) -> None:
    assert clean_markers(text, 3) == expected


def test_strip_markers_removes_every_group() -> None:
    assert strip_markers("Wikipedia says so.[12][13] Fine [1, 2].") == "Wikipedia says so. Fine."


def test_build_citations_maps_markers_to_candidates_in_order() -> None:
    candidates = eiffel_candidates()
    text = "The Eiffel Tower is 330 metres tall [2]. Paris is the capital of France [1]."
    citations = build_citations(text, candidates)
    assert [c.marker for c in citations] == [2, 1]
    first = citations[0]
    assert (first.chunk_id, first.doc_id, first.version) == ("doc2#0", "doc2", 1)
    assert (first.char_start, first.char_end) == (200, 200 + len(EIFFEL[1]))
    assert first.title == "Doc 2"
    assert first.quote == "The Eiffel Tower is 330 metres tall."
    assert citations[1].quote == "Paris is the capital of France."


def test_build_citations_ignores_markers_without_a_source() -> None:
    citations = build_citations("Tall [2][7].", eiffel_candidates())
    assert [c.marker for c in citations] == [2]


def test_quote_falls_back_to_the_chunk_start_when_nothing_matches() -> None:
    long_text = "Lorem ipsum dolor sit amet. " * 20
    from . import candidate

    citations = build_citations("Zebras [1].", [candidate(long_text)])
    assert citations[0].quote.startswith("Lorem ipsum dolor sit amet.")
    assert len(citations[0].quote) <= 200
    assert citations[0].quote.endswith("…")


def _run_filter(deltas: list[str], sources: int = 3) -> tuple[list[str], str]:
    cleaner = MarkerFilter(sources)
    out = [cleaner.feed(delta) for delta in deltas]
    out.append(cleaner.flush())
    return out, cleaner.text


def test_marker_filter_cleans_markers_split_across_deltas() -> None:
    deltas = [
        "  The",
        " tower",
        " is",
        " tall ",
        "[",
        "9",
        "]",
        ". It",
        " is [2",
        ", 7",
        "]",
        " old  ",
    ]
    out, text = _run_filter(deltas)
    assert "".join(out) == text == "The tower is tall. It is [2] old"
    assert text == clean_markers("".join(deltas), 3).strip()


def test_marker_filter_releases_brackets_that_are_not_markers() -> None:
    _, text = _run_filter(["See [note", "] and [", "1"])
    assert text == "See [note] and [1"  # an unclosed group is released at the end
    _, text = _run_filter(["x [" + "1" * 60, " y"])
    assert text == "x [" + "1" * 60 + " y"


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_marker_filter_agrees_with_clean_markers_for_any_split(size: int) -> None:
    raw = " Paris is the capital [1]. The tower [2, 5] is tall [9]. Louvre [3][4]! "
    deltas = [raw[i : i + size] for i in range(0, len(raw), size)]
    out, text = _run_filter(deltas)
    assert "".join(out) == text
    assert text == clean_markers(raw, 3).strip()
    assert text == "Paris is the capital [1]. The tower [2] is tall. Louvre [3]!"
