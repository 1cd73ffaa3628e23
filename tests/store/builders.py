"""Writes and requests the store tests build: chunk ids as the chunker makes them."""

import hashlib

import numpy as np

from shared.contracts.chunks import chunk_id
from shared.store.records import ChunkRecord, SearchRequest, UpsertDoc

DIM = 8


def vec(i: int) -> np.ndarray:
    """A deterministic unit vector pointing mostly along axis i."""
    v = np.full(DIM, 0.05, dtype=np.float32)
    v[i % DIM] = 1.0
    return v / np.linalg.norm(v)


def upsert(
    doc_id: str, version: int, texts: list[str], *, source: str = "", tags: tuple[str, ...] = ()
) -> UpsertDoc:
    """Same text at the same ordinal -> same chunk id, as the chunker makes them."""
    chunks = [
        ChunkRecord(
            chunk_id=chunk_id(doc_id, i, hashlib.sha1(t.encode()).hexdigest()),
            doc_id=doc_id,
            version=version,
            ordinal=i,
            title=f"Title of {doc_id}",
            text=t,
            section_path=("Intro", f"Part {i}"),
            char_start=i * 100,
            char_end=i * 100 + len(t),
            source=source,
            tags=tags,
        )
        for i, t in enumerate(texts)
    ]
    seed = int(hashlib.sha1(f"{doc_id}{version}".encode()).hexdigest(), 16)
    vectors = np.stack([vec(seed + i) for i in range(len(texts))]) if texts else np.empty((0, DIM))
    return UpsertDoc(doc_id, version, chunks, vectors.astype(np.float32))


def bm25(text: str, **kw: object) -> SearchRequest:
    return SearchRequest(text=text, vector=None, mode="bm25", **kw)  # type: ignore[arg-type]


def dense(v: np.ndarray, **kw: object) -> SearchRequest:
    return SearchRequest(text="", vector=v, mode="dense", **kw)  # type: ignore[arg-type]
