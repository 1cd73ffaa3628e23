"""Scale benchmark: a LanceDB index of N chunks with its ANN index — build time, query latency,
ANN recall, memory and disk.

    python -m bench.scale --corpus ../shared/datasets/scifact/corpus.jsonl \
        --queries ../shared/datasets/scifact/queries-train.jsonl [--chunks 1000000] [--n 200] \
        [--write store|bulk] [--source-docs N] [--root DIR [--reuse [--rebuild-ann]]]

Source chunks: the SciFact chunks and vectors of the evaluation's cached index (same chunker and
embedder settings, `ragstream eval` builds it), else the first `--source-docs` docs chunked
and embedded here with the stages' code (`ragstream.evaluation.indexing.build_direct`). They
are copied until there are `--chunks` rows: copy c of doc d is doc ``d~c`` (unique doc and chunk
ids, same text), its vectors the originals plus Gaussian noise (`--noise` per component),
re-normalised, so 1M chunks need no 1M encodes.

Write path `store` (default): `LanceDBStore.apply` in batches of `--batch-docs` docs (rows,
fence markers, prune: the embedder's path), `optimize` every `--optimize-every` batches as the
embedder does; `bulk`: the rows appended in large batches and the markers inserted once. Then a
final `optimize` builds the ANN index (`--ann-min-rows`, default: the row count, so the index is
trained on the whole table once, `--partition-rows` rows a partition) and folds every row into
the FTS index. `--rebuild-ann` drops a reused index's ANN index and has `optimize` train a new
one (to compare partition sizes on the same rows).

Queries: `--n` SciFact train queries, embedded with the retriever's embedder, asked one at a
time through `hybrid_search` (fences applied, k=10, `--candidates` deep; the retriever's
default is 300): dense, hybrid and BM25 p50/p95 ms, after `--warmup` other queries in each mode
(a serving replica's page cache holds the index files it reads; the first queries of a fresh
process read them from disk). Recall@10: the dense top-10 vs an exact
scan (``bypass_vector_index``). Memory: the process's RSS before the index is opened (query
embedder loaded) and at the end; with
`--reuse` (query the index an earlier run left at `--root`) that is a query-serving process
only. Prints one JSON line.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ragstream.ingest import load_documents, percentile
from shared.settings import EmbeddingSettings, StoreSettings
from shared.store.lancedb_store import LanceDBStore
from shared.store.records import ChunkRecord, DocState, Hit, SearchRequest, UpsertDoc

VERSION = 1


async def source_docs(corpus: Path, cache_dir: Path, limit: int) -> tuple[list[UpsertDoc], str]:
    """The SciFact chunks with their vectors, and where they came from."""
    from ragstream.evaluation.beir import CorpusDoc, Dataset
    from ragstream.evaluation.indexing import cache_key, read_info
    from services.chunker.settings import ChunkerSettings

    docs = load_documents(corpus)
    dataset = Dataset(
        "scifact", "train", {d.doc_id: CorpusDoc(d.doc_id, d.title, d.text) for d in docs}, {}, {}
    )
    key = cache_key(dataset, ChunkerSettings(), EmbeddingSettings())
    info = read_info(cache_dir / key)
    if info is not None:
        return await _export(Path(info.path)), f"eval cache {info.path}"
    return await _embed(docs[:limit]), f"chunked and embedded {limit} docs"


async def _export(path: Path) -> list[UpsertDoc]:
    store = LanceDBStore(path, 384)
    try:
        return await store.index.export()
    finally:
        await store.close()


async def _embed(docs: list[Any]) -> list[UpsertDoc]:
    from ragstream.evaluation.indexing import build_direct
    from services.chunker.chunking import Chunker, load_tokenizer
    from services.chunker.settings import ChunkerSettings
    from services.embedder.settings import EmbedderSettings
    from shared.contracts import DocUpsert
    from shared.embedding import load_embedder

    embedder = load_embedder(EmbeddingSettings())
    chunker_settings = ChunkerSettings()
    events = [
        DocUpsert(doc_id=d.doc_id, version=VERSION, title=d.title, text=d.text, source="bench")
        for d in docs
    ]
    with tempfile.TemporaryDirectory() as tmp:
        store = LanceDBStore(Path(tmp), embedder.dim)
        try:
            await build_direct(
                events, store, embedder, Chunker(load_tokenizer()),
                batch_size=EmbedderSettings().batch_size,
                max_chunks=chunker_settings.max_chunks_per_doc,
            )  # fmt: skip
            return await store.index.export()
        finally:
            await store.close()


def copies(source: list[UpsertDoc], chunks: int, noise: float, seed: int = 0) -> list[UpsertDoc]:
    """Docs holding `chunks` rows in all: copy c of doc d is ``d~c`` with noisy vectors."""
    rng = np.random.default_rng(seed)
    out: list[UpsertDoc] = []
    total, copy = 0, 0
    while total < chunks:
        for doc in source:
            if total >= chunks:
                break
            n = min(len(doc.chunks), chunks - total)
            doc_id = f"{doc.doc_id}~{copy}"
            records = [
                ChunkRecord(
                    chunk_id=f"{c.chunk_id}~{copy}",
                    doc_id=doc_id,
                    version=VERSION,
                    ordinal=c.ordinal,
                    title=c.title,
                    text=c.text,
                    section_path=c.section_path,
                    char_start=c.char_start,
                    char_end=c.char_end,
                    source=c.source,
                    tags=c.tags,
                )
                for c in doc.chunks[:n]
            ]
            vectors = np.asarray(doc.vectors, dtype=np.float32)[:n]
            if copy:
                vectors = vectors + rng.normal(0, noise, vectors.shape).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            out.append(UpsertDoc(doc_id, VERSION, records, vectors))
            total += n
        copy += 1
    return out


async def write(store: LanceDBStore, docs: list[UpsertDoc], args: argparse.Namespace) -> str:
    if args.write == "bulk":
        chunks, _ = await store.index._tables()
        for start in range(0, len(docs), args.bulk_docs):
            await chunks.add(store.index._rows(docs[start : start + args.bulk_docs]))
        await store.index.insert_fences([DocState(d.doc_id, d.version, False) for d in docs])
        return "bulk: table.add of rows, then one insert of fence markers (not the commit path)"
    for n, start in enumerate(range(0, len(docs), args.batch_docs), start=1):
        await store.apply(docs[start : start + args.batch_docs])
        if n % args.optimize_every == 0:
            await store.optimize()
    return f"store: LanceDBStore.apply, {args.batch_docs} docs a batch, optimize every " + (
        f"{args.optimize_every} batches"
    )


def embed_queries(path: Path, n: int) -> tuple[list[str], np.ndarray]:
    from shared.embedding import load_embedder

    texts = [json.loads(line)["text"] for line in path.open() if line.strip()][:n]
    return texts, load_embedder(EmbeddingSettings()).encode(texts)


def ms(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50), 1), "p95": round(percentile(values, 95), 1)}


async def timed(
    store: LanceDBStore, requests: list[SearchRequest], warmup: list[SearchRequest]
) -> tuple[list[float], list[list[Hit]]]:
    for request in warmup:  # other queries: not the ones timed
        await store.hybrid_search(request)
    times, results = [], []
    for request in requests:
        started = time.perf_counter()
        results.append(await store.hybrid_search(request))
        times.append((time.perf_counter() - started) * 1000)
    return times, results


async def exact_top10(store: LanceDBStore, vector: np.ndarray) -> set[str]:
    chunks, _ = await store.index._tables()
    query = chunks.query().nearest_to(vector).distance_type("cosine").bypass_vector_index()
    table = await query.limit(10).select(["chunk_id", "_distance"]).to_arrow()
    return set(table.column("chunk_id").to_pylist())


def disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    texts, vectors = embed_queries(args.queries, args.n + args.warmup)
    rss_before = rss_mb()  # the embedder for the queries, before any chunk is loaded
    reuse = args.reuse
    docs: list[UpsertDoc] = []
    if reuse:
        origin = f"reused {root}"
    else:
        source, origin = await source_docs(args.corpus, args.cache_dir, args.source_docs)
        docs = copies(source, args.chunks, args.noise)
        del source
    settings = StoreSettings(
        lancedb_path=root, ann_min_rows=args.ann_min_rows or args.chunks,
        ann_index=args.ann_index, ann_nprobes=args.nprobes, ann_refine_factor=args.refine_factor,
        ann_partition_rows=args.partition_rows,
    )  # fmt: skip
    store = LanceDBStore(root, vectors.shape[1], settings=settings)
    try:
        started = time.perf_counter()
        path = "reused: built by an earlier run" if reuse else await write(store, docs, args)
        inserted = time.perf_counter()
        del docs
        if reuse and args.rebuild_ann:
            path += "; ANN index rebuilt"
            chunks, _ = await store.index._tables()
            for index in await chunks.list_indices():
                if "vector" in index.columns:
                    await chunks.drop_index(index.name)
        if not reuse or args.rebuild_ann:  # ANN index (+ FTS fold-in)
            await store.index.optimize(cleanup_older_than=timedelta(0))
        built = time.perf_counter()
        rows = await store.count_chunks()
        chunks, _ = await store.index._tables()
        indices = {i.name: (i.index_type, i.size_bytes) for i in await chunks.list_indices()}
        requests = {
            mode: [
                SearchRequest(text=t, vector=None if mode == "bm25" else v, mode=mode, k=10,
                              candidates=args.candidates)
                for t, v in zip(texts, vectors, strict=True)
            ]
            for mode in ("dense", "hybrid", "bm25")
        }  # fmt: skip
        n = args.n
        dense_ms, dense_hits = await timed(store, requests["dense"][:n], requests["dense"][n:])
        hybrid_ms, _ = await timed(store, requests["hybrid"][:n], requests["hybrid"][n:])
        bm25_ms, _ = await timed(store, requests["bm25"][:n], requests["bm25"][n:])
        recalls = []
        for vector, hits in zip(vectors[:n], dense_hits, strict=True):
            exact = await exact_top10(store, vector)
            recalls.append(len(exact & {h.chunk.chunk_id for h in hits}) / max(len(exact), 1))
        size = disk_bytes(root)
    finally:
        await store.close()
    return {
        "chunks": rows,
        "source": origin,
        "write_path": path,
        "ann": {"index": args.ann_index, "min_rows": settings.ann_min_rows,
                "partition_rows": None if reuse and not args.rebuild_ann else args.partition_rows,
                "nprobes": args.nprobes,
                "refine_factor": args.refine_factor},
        "indices": {name: kind for name, (kind, _) in indices.items()},
        "insert_s": round(inserted - started, 1),
        "optimize_s": round(built - inserted, 1),
        "build_s": round(built - started, 1),
        "rows_per_s": None if reuse else round(rows / (inserted - started), 1),
        "queries": args.n,
        "warmup_queries": args.warmup,
        "candidates": args.candidates,
        "dense_ms": ms(dense_ms),
        "hybrid_ms": ms(hybrid_ms),
        "bm25_ms": ms(bm25_ms),
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "recall_at_10_min": round(float(np.min(recalls)), 2),
        "rss_mb": rss_mb(),
        "rss_before_index_mb": rss_before,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "disk_bytes": size,
        "disk_bytes_per_million_chunks": round(size * 1_000_000 / max(rows, 1)),
        "index_bytes": {name: b for name, (_, b) in indices.items()},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--queries", type=Path, required=True, help="JSONL with a text field")
    parser.add_argument("--chunks", type=int, default=1_000_000, help="rows to index")
    parser.add_argument("--n", type=int, default=200, help="queries to time (and recall)")
    parser.add_argument("--warmup", type=int, default=100, help="other queries, per mode, first")
    parser.add_argument("--candidates", type=int, default=100, help="depth of each list")
    parser.add_argument("--write", choices=("store", "bulk"), default="store")
    parser.add_argument("--batch-docs", type=int, default=500, help="docs per apply (store)")
    parser.add_argument("--optimize-every", type=int, default=50, help="applies (store)")
    parser.add_argument("--bulk-docs", type=int, default=50_000, help="docs per add (bulk)")
    parser.add_argument("--noise", type=float, default=0.01, help="per-component, copies")
    parser.add_argument("--source-docs", type=int, default=1000, help="without an eval cache")
    parser.add_argument("--cache-dir", type=Path, default=Path(".ragstream/eval-cache"))
    parser.add_argument("--ann-min-rows", type=int, default=0, help="default: --chunks")
    parser.add_argument("--ann-index", choices=("ivf_pq", "ivf_hnsw_sq"), default="ivf_pq")
    parser.add_argument(
        "--partition-rows", type=int, default=StoreSettings().ann_partition_rows, help="ivf_pq"
    )
    parser.add_argument("--nprobes", type=int, default=StoreSettings().ann_nprobes)
    parser.add_argument("--refine-factor", type=int, default=StoreSettings().ann_refine_factor)
    parser.add_argument("--root", type=Path, default=None, help="index dir (default: temp)")
    parser.add_argument(
        "--reuse", action="store_true", help="query the index at --root, built by an earlier run"
    )
    parser.add_argument(
        "--rebuild-ann", action="store_true", help="with --reuse: train a new ANN index first"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "index"
        args.reuse = args.reuse and (root / "chunks.lance").is_dir()  # else build it there
        result = asyncio.run(run(args, root))
    result["corpus"] = str(args.corpus)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
