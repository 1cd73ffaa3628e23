"""The embedder's logic on a real LanceDB index: only what changed is embedded."""

import hashlib
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path

import numpy as np
import pytest

from services.chunker.chunking import Chunker, load_tokenizer
from services.chunker.events import chunk_event
from services.embedder.indexing import index_batch, records_of
from shared.chunk_text import embedding_text
from shared.contracts import ChunkedDoc, DocIndexed, DocUnchanged, DocUpsert, IndexOutcome
from shared.recent_vectors import RecentVectors
from shared.stage import Publication
from shared.store.lancedb_store import LanceDBStore
from shared.store.records import DocState, Served, UpsertDoc, Vector, WriteOutcome

DIM = 16


class CountingEmbedder:
    """Hash-seeded unit vectors; records every text it was asked to encode."""

    dim = DIM
    name = "counting"

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> Vector:
        self.encoded += texts
        rows = [
            np.random.default_rng(int(hashlib.sha1(t.encode()).hexdigest(), 16)).normal(size=DIM)
            for t in texts
        ]
        matrix = np.asarray(rows, dtype=np.float32).reshape(-1, DIM)
        unit: Vector = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        return unit


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[LanceDBStore]:
    store = LanceDBStore(tmp_path / "index", dim=DIM)
    yield store
    await store.close()


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(load_tokenizer(), max_tokens=64)


TEXT = "\n\n".join(f"Paragraph {i} says the tapir {i} eats fruit and leaves." * 3 for i in range(8))


def chunked(chunker: Chunker, version: int, text: str = TEXT) -> ChunkedDoc:
    event = chunk_event(DocUpsert(doc_id="tapir", version=version, text=text), chunker, 1000)
    assert isinstance(event, ChunkedDoc)
    return event


def unchanged(
    first: ChunkedDoc, version: int, indexed_version: int, n_chunks: int | None = None
) -> DocUnchanged:
    doc = DocUpsert(doc_id="tapir", version=version, text=TEXT)
    return DocUnchanged(
        doc_id="tapir",
        version=version,
        indexed_version=indexed_version,
        fingerprint=first.fingerprint,
        doc_emitted_at=doc.emitted_at,
        doc=doc,
        n_chunks=n_chunks,
    )


async def index(
    events: Sequence[ChunkedDoc | DocUnchanged],
    embedder: CountingEmbedder,
    store: LanceDBStore,
    recent: RecentVectors | None = None,
) -> list[Publication]:
    outcomes = await index_batch(
        events, embedder, store, out_stream="out", docs_stream="docs", recent=recent
    )
    published: list[Publication] = []
    for outcome in outcomes:
        assert not isinstance(outcome, Exception), outcome
        published += [p for p in outcome if isinstance(p, Publication)]
    return published


@pytest.mark.parametrize("told", [True, False], ids=["chunker-counted", "rows-counted"])
async def test_unchanged_doc_advances_on_its_rows_without_encoding(
    chunker: Chunker, store: LanceDBStore, told: bool
) -> None:
    embedder = CountingEmbedder()
    first = chunked(chunker, 1)
    await index([first], embedder, store)
    assert len(embedder.encoded) == len(first.chunks) > 1
    v1 = (await store.served(["tapir"])).docs

    n_chunks = len(first.chunks) if told else None
    [ack] = await index([unchanged(first, 2, 1, n_chunks)], embedder, store)

    assert isinstance(ack.event, DocIndexed) and ack.event.outcome is IndexOutcome.UNCHANGED
    assert ack.event.n_chunks == len(first.chunks) and ack.event.fingerprint == first.fingerprint
    assert len(embedder.encoded) == len(first.chunks)  # nothing more was encoded
    v2 = await store.served(["tapir"])
    assert v2.fences["tapir"] == DocState("tapir", 2, False, rows_version=1)
    assert v2.docs["tapir"].chunks == v1["tapir"].chunks  # the same rows, vectors and all
    np.testing.assert_array_equal(v2.docs["tapir"].vectors, v1["tapir"].vectors)
    assert await store.count_chunks("tapir") == len(first.chunks)  # v2 serves v1's rows
    await store.prune()  # the stage runs it on a timer: it keeps the rows v2 serves
    assert await store.count_chunks("tapir") == len(first.chunks)
    assert await store.current_version("tapir") == DocState("tapir", 2, False, rows_version=1)


async def test_unchanged_doc_whose_base_is_gone_goes_back_to_be_chunked(
    chunker: Chunker, store: LanceDBStore
) -> None:
    embedder = CountingEmbedder()
    first = chunked(chunker, 1)
    changed = chunked(chunker, 2, TEXT + "\n\nA new closing paragraph.")
    await index([first, changed], embedder, store)

    [resent] = await index([unchanged(first, 3, indexed_version=1)], embedder, store)

    assert resent.stream == "docs"
    assert isinstance(resent.event, DocUpsert) and resent.event.force
    assert resent.event.version == 3 and resent.event.text == TEXT
    state = await store.current_version("tapir")
    assert state is not None and state.version == 2  # nothing was written for v3


class RacedStore(LanceDBStore):
    """A LanceDB index on which another writer commits `racing` (and prunes) right after each
    `served` read: the index moves on between a batch's read and its apply."""

    racing: UpsertDoc | None = None

    async def served(
        self, doc_ids: Collection[str], *, rows: Collection[str] | None = None
    ) -> Served:
        read = await super().served(doc_ids, rows=rows)
        if self.racing is not None:
            other = LanceDBStore(self.index.path, dim=DIM)
            await other.apply([self.racing])
            await other.close()
        return read


async def test_unchanged_doc_whose_rows_go_before_its_marker_goes_back_to_be_chunked(
    chunker: Chunker, tmp_path: Path
) -> None:
    store = RacedStore(tmp_path / "index", dim=DIM)
    embedder = CountingEmbedder()
    first = chunked(chunker, 1)
    await index([first], embedder, store)
    store.racing = UpsertDoc("tapir", 2, [], np.empty((0, DIM), np.float32))
    try:
        [resent] = await index([unchanged(first, 3, 1, len(first.chunks))], embedder, store)
    finally:
        await store.close()

    assert resent.stream == "docs"
    assert isinstance(resent.event, DocUpsert) and resent.event.force
    assert resent.event.version == 3  # and once chunked, v3 gets rows of its own


async def test_an_edit_encodes_only_the_chunks_whose_text_changed(
    chunker: Chunker, store: LanceDBStore
) -> None:
    embedder = CountingEmbedder()
    first = chunked(chunker, 1)
    await index([first], embedder, store)
    v1 = (await store.served(["tapir"])).docs["tapir"]
    edited = TEXT.replace("Paragraph 5 says", "Paragraph 5 now says")
    second = chunked(chunker, 2, edited)
    embedder.encoded.clear()

    [ack] = await index([second], embedder, store)

    assert isinstance(ack.event, DocIndexed) and ack.event.outcome is IndexOutcome.INDEXED
    new_texts = {c.text for c in second.chunks} - {c.text for c in first.chunks}
    assert len(embedder.encoded) == len(new_texts) == 1
    assert "Paragraph 5 now says" in embedder.encoded[0]
    v2 = (await store.served(["tapir"])).docs["tapir"]
    assert v2.version == 2 and len(v2.chunks) == len(second.chunks)
    old = {c.text: v for c, v in zip(v1.chunks, v1.vectors, strict=True)}
    for chunk, vector in zip(v2.chunks, v2.vectors, strict=True):
        if chunk.text in old:  # a reused vector is the very one the first version stored
            np.testing.assert_array_equal(vector, old[chunk.text])


def texts_and_vectors(doc: UpsertDoc) -> tuple[list[str], Vector]:
    return [embedding_text(c.title, c.section_path, c.text) for c in doc.chunks], doc.vectors


async def test_an_edit_of_a_doc_this_writer_knows_reads_no_rows_and_embeds_only_new_text(
    chunker: Chunker, store: LanceDBStore
) -> None:
    embedder, recent = CountingEmbedder(), RecentVectors(1000)
    first = chunked(chunker, 1)
    await index([first], embedder, store, recent)
    v1 = (await store.served(["tapir"])).docs["tapir"]
    texts, vectors = texts_and_vectors(v1)
    recent.put("tapir", 1, texts, -vectors)  # what it remembers, told apart from the index's
    embedder.encoded.clear()

    second = chunked(chunker, 2, TEXT.replace("Paragraph 5 says", "Paragraph 5 now says"))
    [ack] = await index([second], embedder, store, recent)

    assert isinstance(ack.event, DocIndexed) and ack.event.outcome is IndexOutcome.INDEXED
    assert len(embedder.encoded) == 1 and "Paragraph 5 now says" in embedder.encoded[0]
    v2 = (await store.served(["tapir"])).docs["tapir"]
    remembered = dict(zip(texts, -vectors, strict=True))
    reused = [(t, v) for t, v in zip(*texts_and_vectors(v2), strict=True) if t in remembered]
    assert len(reused) == len(second.chunks) - 1
    for text, vector in reused:  # the remembered vectors, not the index's: no rows were read
        np.testing.assert_array_equal(vector, remembered[text])
    known = recent.get("tapir")
    assert known is not None and known.rows_version == 2 and len(known.vectors) == len(reused) + 1


async def test_a_doc_another_writer_moved_on_is_read_after_all(
    chunker: Chunker, store: LanceDBStore
) -> None:
    embedder, recent = CountingEmbedder(), RecentVectors(1000)
    await index([chunked(chunker, 1)], embedder, store, recent)
    text_2 = TEXT.replace("Paragraph 2 says", "Paragraph 2 now says")
    records = records_of(chunked(chunker, 2, text_2))
    texts = [embedding_text(r.title, r.section_path, r.text) for r in records]
    other = UpsertDoc("tapir", 2, records, -CountingEmbedder().encode(texts))  # told apart
    assert await store.apply([other]) == [WriteOutcome.APPLIED]  # by another writer
    assert recent.get("tapir") is not None  # still v1's, as far as this writer knows
    v2 = (await store.served(["tapir"])).docs["tapir"]

    third = chunked(chunker, 3, text_2.replace("Paragraph 6 says", "Paragraph 6 now says"))
    [ack] = await index([third], embedder, store, recent)

    assert isinstance(ack.event, DocIndexed) and ack.event.outcome is IndexOutcome.INDEXED
    stored = dict(zip(*texts_and_vectors(v2), strict=True))
    v3 = (await store.served(["tapir"])).docs["tapir"]
    reused = [(t, v) for t, v in zip(*texts_and_vectors(v3), strict=True) if t in stored]
    assert len(reused) == len(third.chunks) - 1
    for text, vector in reused:  # v2's rows were read: its vectors are reused
        np.testing.assert_array_equal(vector, stored[text])
    known = recent.get("tapir")
    assert known is not None and known.rows_version == 3
