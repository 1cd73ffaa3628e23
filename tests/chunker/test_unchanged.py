"""When the chunker skips chunking: the doc's fingerprint against what the index serves."""

from datetime import UTC, datetime

import pytest

from services.chunker.chunking import Chunker, load_tokenizer
from services.chunker.events import chunk_event, fingerprint
from shared.contracts import ChunkedDoc, DocUnchanged, DocUpsert
from shared.doc_state import DocState


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(load_tokenizer(), max_tokens=128)


def doc(version: int, text: str = "The kinkajou is a mammal.", **kw: object) -> DocUpsert:
    return DocUpsert(doc_id="k", version=version, text=text, **kw)


def served(version: int, made_from: str, *, deleted: bool = False) -> DocState:
    return DocState(
        doc_id="k",
        version=version,
        deleted=deleted,
        n_chunks=3,
        indexed_at=datetime.now(UTC),
        fingerprint=made_from,
    )


def test_same_fingerprint_at_a_newer_version_is_unchanged(chunker: Chunker) -> None:
    out = chunk_event(doc(2), chunker, 100, served(1, fingerprint(doc(1), chunker)))
    assert isinstance(out, DocUnchanged)
    assert (out.version, out.indexed_version, out.doc.version) == (2, 1, 2)
    assert out.n_chunks == 3  # what the index serves: the embedder need not count the rows


@pytest.mark.parametrize(
    ("event", "state_of"),
    [
        (doc(2, "The kinkajou eats fruit."), lambda c: served(1, fingerprint(doc(1), c))),
        (doc(2, metadata={"lang": "en"}), lambda c: served(1, fingerprint(doc(1), c))),
        (doc(2, source="wiki/kinkajou.md"), lambda c: served(1, fingerprint(doc(1), c))),
        (doc(2, title="Kinkajou"), lambda c: served(1, fingerprint(doc(1), c))),
        (doc(2, force=True), lambda c: served(1, fingerprint(doc(1), c))),
        (doc(2), lambda c: served(1, fingerprint(doc(1), c), deleted=True)),
        (doc(2), lambda c: served(2, fingerprint(doc(2), c))),  # a replay: chunk it again
        (doc(2), lambda c: None),
    ],
    ids=["text", "metadata", "source", "title", "force", "deleted", "same-version", "unknown"],
)
def test_anything_else_is_chunked(chunker: Chunker, event: DocUpsert, state_of: object) -> None:
    state = state_of(chunker)  # type: ignore[operator]
    out = chunk_event(event, chunker, 100, state)
    assert isinstance(out, ChunkedDoc) and out.chunks
    assert out.fingerprint == fingerprint(event, chunker)


def test_other_chunker_settings_make_another_fingerprint(chunker: Chunker) -> None:
    other = Chunker(load_tokenizer(), max_tokens=256)
    assert fingerprint(doc(1), chunker) != fingerprint(doc(1), other)
    out = chunk_event(doc(2), other, 100, served(1, fingerprint(doc(1), chunker)))
    assert isinstance(out, ChunkedDoc)
