"""What `ragstream evaluate-cv` scores offline: each query's dense and BM25 chunk lists, a
whole-document BM25 list, and cross-encoder scores of the chunks it may rerank — each read or
computed once and cached beside the index, so the grid itself is pure numpy.

Caches (JSON, under the index's cache directory `<cache>/<key>/`):
``cv-lists-<depth>.json`` (per query id: dense and BM25 `(chunk id, raw score)` lists, best
first, as `store.hybrid_search` returns them in `dense` / `bm25` mode, plus chunk id -> doc id,
title, text) and ``cv-rerank-<model hash>.json`` (per query id: chunk id -> reranker score).
A query missing from a cache is read (embedded) and added; nothing is read twice.
"""

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragstream.evaluation.beir import Dataset
from ragstream.evaluation.indexing import IndexInfo
from shared.embedding import Embedder, encode_async
from shared.store.lancedb_store import LanceDBStore
from shared.store.records import SearchMode, SearchRequest

Scored = list[tuple[str, float]]


@dataclass
class Lists:
    dense: dict[str, Scored]
    bm25: dict[str, Scored]
    chunks: dict[str, tuple[str, str, str]]
    """Chunk id -> (doc id, title, text)."""


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _load_lists(path: Path) -> Lists:
    if not path.is_file():
        return Lists({}, {}, {})
    data = json.loads(path.read_text())
    return Lists(
        {q: [(c, float(s)) for c, s in v] for q, v in data["dense"].items()},
        {q: [(c, float(s)) for c, s in v] for q, v in data["bm25"].items()},
        {c: (d, t, x) for c, (d, t, x) in data["chunks"].items()},
    )


async def _read_lists(
    queries: Mapping[str, str],
    *,
    info: IndexInfo,
    embedder: Embedder,
    depth: int,
    lists: Lists,
    on_progress: Callable[[], None] | None,
) -> None:
    store = LanceDBStore(info.path, embedder.dim)
    try:
        for qid, text in queries.items():
            vector = (await encode_async(embedder, [text]))[0]
            modes: tuple[tuple[SearchMode, dict[str, Scored]], ...] = (
                ("dense", lists.dense),
                ("bm25", lists.bm25),
            )
            for mode, target in modes:
                request = SearchRequest(text, vector, k=depth, mode=mode, candidates=depth)
                hits = await store.hybrid_search(request)
                for h in hits:
                    lists.chunks[h.chunk.chunk_id] = (h.chunk.doc_id, h.chunk.title, h.chunk.text)
                target[qid] = [(h.chunk.chunk_id, float(h.score)) for h in hits]
            if on_progress is not None:
                on_progress()
    finally:
        await store.close()


def cached_lists(
    dataset: Dataset,
    info: IndexInfo,
    embedder: Embedder,
    depth: int,
    *,
    on_start: Callable[[int], Callable[[], None] | None] | None = None,
) -> Lists:
    """Every query's dense and BM25 lists, `depth` chunks deep: from the cache, the missing
    queries read from the index (and the cache updated)."""
    path = Path(info.path).parent / f"cv-lists-{depth}.json"
    lists = _load_lists(path)
    missing = {q: t for q, t in dataset.queries.items() if q not in lists.dense}
    if missing:
        progress = on_start(len(missing)) if on_start is not None else None
        asyncio.run(
            _read_lists(
                missing,
                info=info,
                embedder=embedder,
                depth=depth,
                lists=lists,
                on_progress=progress,
            )
        )
        _write_json(
            path,
            {
                "dense": lists.dense,
                "bm25": lists.bm25,
                "chunks": {c: list(v) for c, v in lists.chunks.items()},
            },
        )
    return lists


def doc_bm25(dataset: Dataset, depth: int) -> dict[str, Scored]:
    """A whole-document BM25 field: per query, the top `depth` docs by BM25 over each doc's
    title + text, unchunked (`bm25s`, k1=0.9, b=0.4, English stop words, Snowball stems: the
    settings of the datasets' reference BM25)."""
    import logging

    import bm25s
    import Stemmer

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    stemmer = Stemmer.Stemmer("english")
    doc_ids = list(dataset.corpus)
    texts = [f"{d.title} {d.text}".strip() for d in dataset.corpus.values()]
    retriever = bm25s.BM25(k1=0.9, b=0.4)
    retriever.index(
        bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False),
        show_progress=False,
    )
    qids = list(dataset.queries)
    tokens = bm25s.tokenize(
        [dataset.queries[q] for q in qids],
        stopwords="en",
        stemmer=stemmer,
        return_ids=False,
        show_progress=False,
    )
    k = min(depth, len(doc_ids))
    out: dict[str, Scored] = {}
    for qid, words in zip(qids, tokens, strict=True):
        if not words:
            out[qid] = []
            continue
        found, scores = retriever.retrieve([words], k=k, show_progress=False)
        out[qid] = [
            (doc_ids[int(i)], float(s)) for i, s in zip(found[0], scores[0], strict=True) if s > 0
        ]
    return out


def model_key(model: str, runtime: str, precision: str) -> str:
    return hashlib.sha256(f"{model}|{runtime}|{precision}".encode()).hexdigest()[:12]


async def _score_pairs(
    todo: Mapping[str, Sequence[str]],
    *,
    queries: Mapping[str, str],
    lists: Lists,
    scores: dict[str, dict[str, float]],
    settings: Any,
    on_progress: Callable[[], None] | None,
    save: Callable[[], None],
) -> None:
    from services.reranker.factory import build_reranker
    from services.reranker.reranking import passage_text
    from shared.contracts.queries import Candidate

    reranker = build_reranker(settings)
    assert reranker is not None
    try:
        for done, (qid, chunk_ids) in enumerate(todo.items(), start=1):
            passages = []
            for cid in chunk_ids:
                doc_id, title, text = lists.chunks[cid]
                candidate = Candidate(
                    chunk_id=cid,
                    doc_id=doc_id,
                    version=1,
                    title=title,
                    text=text,
                    char_start=0,
                    char_end=max(1, len(text)),
                    fused_score=0.0,
                )
                passages.append(passage_text(candidate, settings.max_passage_chars))
            values = await reranker.score(queries[qid], passages)
            scores.setdefault(qid, {}).update(zip(chunk_ids, map(float, values), strict=True))
            if done % 50 == 0:
                save()
            if on_progress is not None:
                on_progress()
    finally:
        await reranker.aclose()


def cached_rerank_scores(
    info: IndexInfo,
    queries: Mapping[str, str],
    wanted: Mapping[str, Collection[str]],
    lists: Lists,
    settings: Any,
    *,
    on_start: Callable[[int], Callable[[], None] | None] | None = None,
) -> dict[str, dict[str, float]]:
    """Reranker scores of the `wanted` chunks of each query (`settings`: a `RerankerSettings`
    with a cross-encoder), the cached ones read, the others scored and cached."""
    key = model_key(str(settings.model), settings.runtime, settings.onnx_precision)
    path = Path(info.path).parent / f"cv-rerank-{key}.json"
    scores: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.is_file() else {}
    todo = {
        q: sorted(c for c in chunk_ids if c not in scores.get(q, {}))
        for q, chunk_ids in wanted.items()
    }
    todo = {q: c for q, c in todo.items() if c}
    if todo:
        progress = on_start(len(todo)) if on_start is not None else None
        asyncio.run(
            _score_pairs(
                todo,
                queries=queries,
                lists=lists,
                scores=scores,
                settings=settings,
                on_progress=progress,
                save=lambda: _write_json(path, scores),
            )
        )
        _write_json(path, scores)
    return {q: scores.get(q, {}) for q in wanted}
