"""Evaluation data: BEIR layout (SciFact) and the SQuAD-mini passages, as one `Dataset` shape.

BEIR: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` or
``queries-<split>.jsonl`` (``_id``, ``text``) and ``qrels/<split>.tsv`` (a header, then
``query-id<TAB>corpus-id<TAB>score``). Queries absent from the qrels are dropped.
SQuAD-mini: ``passages.jsonl`` (``_id``, ``title``, ``text``) and ``qa.jsonl`` (``id``,
``question``, ``gold_passage_id``): one relevant passage per question.
"""

import csv
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Qrels = dict[str, dict[str, int]]
Half = Literal["a", "b"]


@dataclass(frozen=True, slots=True)
class CorpusDoc:
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    split: str
    corpus: Mapping[str, CorpusDoc]
    queries: Mapping[str, str]
    """Only queries with at least one positive judgement, in file order."""
    qrels: Qrels

    def corpus_hash(self) -> str:
        """Content hash of the corpus (ids, titles, texts, in order): the index cache key."""
        digest = hashlib.sha256()
        for doc in self.corpus.values():
            for part in (doc.doc_id, doc.title, doc.text):
                digest.update(part.encode("utf-8"))
                digest.update(b"\x00")
        return digest.hexdigest()


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def load_dataset(data: Path, split: str) -> Dataset:
    """A BEIR folder, or a SQuAD-mini folder (``passages.jsonl`` + ``qa.jsonl``)."""
    if (data / "corpus.jsonl").is_file():
        return load_beir(data, split)
    if (data / "passages.jsonl").is_file() and (data / "qa.jsonl").is_file():
        return load_squad_mini(data, split)
    raise ValueError(f"{data}: neither BEIR (corpus.jsonl) nor SQuAD-mini (passages.jsonl)")


def load_beir(data: Path, split: str) -> Dataset:
    corpus = {
        str(row["_id"]): CorpusDoc(str(row["_id"]), str(row.get("title") or ""), str(row["text"]))
        for row in _jsonl(data / "corpus.jsonl")
    }
    for name in (f"queries-{split}.jsonl", "queries.jsonl"):
        if (data / name).is_file():
            queries_file = data / name
            break
    else:
        raise ValueError(f"{data}: no queries.jsonl or queries-{split}.jsonl")
    qrels: Qrels = {}
    with (data / "qrels" / f"{split}.tsv").open(encoding="utf-8", newline="") as tsv:
        rows = csv.reader(tsv, delimiter="\t")
        next(rows, None)  # header
        for row in rows:
            if len(row) >= 3 and int(row[2]) > 0 and row[1] in corpus:
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    queries = {
        str(row["_id"]): str(row["text"])
        for row in _jsonl(queries_file)
        if str(row["_id"]) in qrels
    }
    return Dataset(data.name, split, corpus, queries, {q: qrels[q] for q in queries})


def load_squad_mini(data: Path, split: str) -> Dataset:
    corpus = {
        str(row["_id"]): CorpusDoc(str(row["_id"]), str(row.get("title") or ""), str(row["text"]))
        for row in _jsonl(data / "passages.jsonl")
    }
    queries: dict[str, str] = {}
    qrels: Qrels = {}
    for row in _jsonl(data / "qa.jsonl"):
        if str(row["gold_passage_id"]) in corpus:
            queries[str(row["id"])] = str(row["question"])
            qrels[str(row["id"])] = {str(row["gold_passage_id"]): 1}
    return Dataset(data.name, split, corpus, queries, qrels)


def query_half(query_id: str, seed: int = 0) -> Half:
    """A deterministic half of the queries, by hash of the id (for train/held-out splits)."""
    digest = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
    return "a" if digest[0] % 2 == 0 else "b"


def select(
    dataset: Dataset,
    *,
    max_docs: int | None = None,
    max_queries: int | None = None,
    half: Half | None = None,
    seed: int = 0,
) -> Dataset:
    """A smaller dataset for CI or a held-out half, deterministically.

    `half` keeps the queries of that half (`query_half`). `max_queries` keeps the first queries
    in file order; with `max_docs`, only queries whose relevant docs still fit are kept, and the
    corpus is their relevant docs padded with the first other docs up to `max_docs`.
    """
    queries = {
        q: t for q, t in dataset.queries.items() if half is None or query_half(q, seed) == half
    }
    corpus = dict(dataset.corpus)
    if max_docs is not None:
        keep: dict[str, None] = {}
        chosen: dict[str, str] = {}
        for qid, text in queries.items():
            if max_queries is not None and len(chosen) >= max_queries:
                break
            wanted = [d for d in dataset.qrels[qid] if d not in keep]
            if len(keep) + len(wanted) > max_docs:
                continue
            keep.update(dict.fromkeys(wanted))
            chosen[qid] = text
        for doc_id in dataset.corpus:
            if len(keep) >= max_docs:
                break
            keep.setdefault(doc_id, None)
        corpus = {d: dataset.corpus[d] for d in dataset.corpus if d in keep}
        queries = chosen
    elif max_queries is not None:
        queries = dict(list(queries.items())[:max_queries])
    qrels = {q: dataset.qrels[q] for q in queries}
    return Dataset(dataset.name, dataset.split, corpus, queries, qrels)
