"""Metrics on a tiny hand-checkable qrels set, chunk-to-doc aggregation, and data loading."""

import json
import math
from pathlib import Path

import pytest

from ragstream.evaluation.beir import load_dataset, query_half, select
from ragstream.evaluation.metrics import chunk_level, docs_by_best_chunk, evaluate

QRELS = {"q1": {"d1": 1, "d2": 1}, "q2": {"d9": 1}, "q3": {"d5": 1}}
RANKINGS = {"q1": ["d3", "d1", "x", "d2"], "q2": [], "q3": ["d5", "d7"]}


def test_metrics_match_hand_computed_values() -> None:
    # q1: hits at ranks 2 and 4 of 2 relevant; q2: nothing retrieved; q3: hit at rank 1.
    ndcg_q1 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))  # 0.650921
    scores = evaluate(QRELS, RANKINGS, ["ndcg@10", "recall@10", "mrr@10", "recall@1", "ndcg@1"])
    assert scores["ndcg@10"] == pytest.approx((ndcg_q1 + 0 + 1) / 3, abs=1e-6)
    assert scores["recall@10"] == pytest.approx(2 / 3, abs=1e-6)
    assert scores["mrr@10"] == pytest.approx((1 / 2 + 0 + 1) / 3, abs=1e-6)
    assert scores["recall@1"] == pytest.approx(1 / 3, abs=1e-6)
    assert scores["ndcg@1"] == pytest.approx(1 / 3, abs=1e-6)


def test_cutoff_and_unjudged_queries() -> None:
    # recall@2 of q1 sees only d3, d1: one of two; a run for an unjudged query is ignored.
    scores = evaluate({"q1": QRELS["q1"]}, {**RANKINGS, "zz": ["d1"]}, ["recall@2", "mrr@1"])
    assert scores == {"recall@2": 0.5, "mrr@1": 0.0}


def test_docs_ranked_by_best_chunk_and_chunk_level_cutoffs() -> None:
    chunks = {"q1": ["d3", "d3", "d3", "d1", "d2"]}
    assert docs_by_best_chunk(chunks["q1"]) == ["d3", "d1", "d2"]
    # Counting chunks, the top-3 holds one doc (d3): d1 and d2 are lost at @3.
    lost = chunk_level({"q1": QRELS["q1"]}, chunks, 3)
    assert lost["recall@3"] == 0.0
    kept = evaluate({"q1": QRELS["q1"]}, {"q1": docs_by_best_chunk(chunks["q1"])}, ["recall@3"])
    assert kept["recall@3"] == 1.0


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_beir_loading_and_selection(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"_id": f"d{i}", "title": f"T{i}", "text": f"text {i}"} for i in range(6)],
    )
    write_jsonl(
        tmp_path / "queries-dev.jsonl",
        [{"_id": "a", "text": "qa"}, {"_id": "b", "text": "qb"}, {"_id": "c", "text": "qc"}],
    )
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "dev.tsv").write_text(
        "query-id\tcorpus-id\tscore\na\td4\t1\nb\td1\t1\nb\td2\t1\n"
    )
    data = load_dataset(tmp_path, "dev")
    assert list(data.queries) == ["a", "b"]  # c has no judgements
    assert data.qrels == {"a": {"d4": 1}, "b": {"d1": 1, "d2": 1}}
    small = select(data, max_docs=2, max_queries=5)
    assert list(small.queries) == ["a"]  # b's two docs no longer fit beside d4
    assert list(small.corpus) == ["d0", "d4"]  # its docs, padded in corpus order
    halves = {q: query_half(q) for q in "abcdefgh"}
    assert set(halves.values()) == {"a", "b"} and halves == {q: query_half(q) for q in "abcdefgh"}
    assert data.corpus_hash() == load_dataset(tmp_path, "dev").corpus_hash()
