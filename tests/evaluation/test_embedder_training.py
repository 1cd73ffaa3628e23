"""`ragstream train-embedder` on a tiny synthetic corpus: the fold split is `kfold`'s, the
held-out fold's queries never reach the training examples, batches hold no query or positive
doc twice, one training step saves a model the embedder loads (and that differs from the base),
and the command refuses the test split."""

import io
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from ragstream.cli import build_parser
from ragstream.evaluation import cross_validation as cv
from ragstream.evaluation.beir import CorpusDoc, Dataset
from ragstream.evaluation.commands import load_embedder
from ragstream.evaluation.embedder_command import run_train_embedder
from ragstream.evaluation.embedder_training import (
    EmbedderTrainingConfig,
    Example,
    batches,
    fit,
    mine_examples,
    only_queries,
    train_embedder,
    training_split,
)
from ragstream.evaluation.indexing import IndexInfo, ensure_index
from shared.embedding import SentenceTransformerEmbedder
from shared.settings import EmbeddingSettings

QUIET = Console(file=io.StringIO())
TOPICS = {
    "d0": ("Vitamin D", "Vitamin D deficiency is linked to weaker bones in older adults."),
    "d1": ("Malaria", "Mosquito nets treated with insecticide reduce malaria infections."),
    "d2": ("Statins", "Statins lower LDL cholesterol and the risk of heart attacks."),
    "d3": ("Sleep", "Short sleep duration impairs memory consolidation in students."),
    "d4": ("Smoking", "Smoking increases the risk of lung cancer by damaging airway cells."),
    "d5": ("Exercise", "Regular aerobic exercise lowers resting blood pressure."),
    "d6": ("Antibiotics", "Overuse of antibiotics drives bacterial resistance in hospitals."),
    "d7": ("Coffee", "Moderate coffee intake is not associated with higher mortality."),
    "d8": ("Gut flora", "Gut microbiota composition shifts after a high fibre diet."),
    "d9": ("Vaccines", "Measles vaccination prevents outbreaks in school children."),
    "d10": ("Obesity", "Obesity raises the risk of type 2 diabetes through insulin resistance."),
    "d11": ("Ageing", "Telomere shortening is a marker of cellular ageing."),
}
QUERIES = {
    "q1": ("Does vitamin D affect bone strength?", "d0"),
    "q2": ("Do treated bed nets prevent malaria?", "d1"),
    "q3": ("Do statins reduce heart attacks?", "d2"),
    "q4": ("Does lack of sleep hurt memory?", "d3"),
    "q5": ("Does smoking cause lung cancer?", "d4"),
    "q6": ("Does exercise lower blood pressure?", "d5"),
}
FOLDS = 3


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    corpus = {d: CorpusDoc(d, title, text) for d, (title, text) in TOPICS.items()}
    return Dataset(
        "tiny", "train", corpus,
        {q: text for q, (text, _) in QUERIES.items()},
        {q: {doc: 1} for q, (_, doc) in QUERIES.items()},
    )  # fmt: skip


@pytest.fixture(scope="module")
def index(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> IndexInfo:
    return ensure_index(dataset, tmp_path_factory.mktemp("cache"), load_embedder())


def test_split_is_kfolds_split() -> None:
    ids = [f"q{i}" for i in range(23)]
    folds = cv.kfold(ids, 5, 7)
    for k in range(5):
        split = training_split(ids, folds=5, fold=k, seed=7)
        assert split.held_out == sorted(folds[k])
        assert set(split.train) == set(ids) - set(folds[k])
    everything = training_split(ids, folds=5, fold=None, seed=7)
    assert everything.train == sorted(ids) and everything.held_out == []
    with pytest.raises(ValueError):
        training_split(ids, folds=5, fold=5)


@pytest.mark.parametrize("fold", range(FOLDS))
def test_held_out_queries_never_become_examples(
    dataset: Dataset, index: IndexInfo, fold: int
) -> None:
    import asyncio

    split = training_split(list(dataset.queries), folds=FOLDS, fold=fold)
    assert split.held_out
    examples = asyncio.run(
        mine_examples(dataset, split.train, index, load_embedder(), EmbedderTrainingConfig())
    )
    held_texts = {dataset.queries[q] for q in split.held_out}
    assert {e.query_id for e in examples} == set(split.train)
    assert not {e.query for e in examples} & held_texts
    for e in examples:
        assert e.doc_id in dataset.qrels[e.query_id]
        assert TOPICS[e.doc_id][1] in e.positive
        assert len(e.negatives) == 1
        relevant_texts = [TOPICS[d][1] for d in dataset.qrels[e.query_id]]
        assert not any(t in n for t in relevant_texts for n in e.negatives)


def test_only_queries_keeps_the_corpus(dataset: Dataset) -> None:
    held = only_queries(dataset, ["q2", "q5"])
    assert list(held.queries) == ["q2", "q5"] and set(held.qrels) == {"q2", "q5"}
    assert held.corpus == dataset.corpus


def test_batches_never_repeat_a_query_or_a_positive() -> None:
    examples = [
        Example(f"q{i % 5}", f"d{i % 3}", f"query {i % 5}", f"doc {i % 3}", ("neg",))
        for i in range(30)
    ]
    out = batches(examples, 4, random.Random(0))
    assert Counter(e for b in out for e in b) == Counter(examples)
    for batch in out:
        assert 0 < len(batch) <= 4
        assert len({e.query_id for e in batch}) == len(batch)
        assert len({e.doc_id for e in batch}) == len(batch)


def test_one_step_saves_a_model_the_embedder_loads(
    dataset: Dataset, index: IndexInfo, tmp_path: Path
) -> None:
    split = training_split(list(dataset.queries), folds=FOLDS, fold=0)
    config = EmbedderTrainingConfig(batch_size=8, max_seq_length=32, learning_rate=1e-3)
    out = tmp_path / "tuned"
    summary = train_embedder(dataset, split, index, load_embedder(), out, config=config, err=QUIET)
    assert summary["examples"] == len(split.train) and summary["held_out_queries"] == 2
    tuned = SentenceTransformerEmbedder(EmbeddingSettings(model=str(out)))
    base = load_embedder()  # the default model, already loaded by the fixtures
    text = ["Does vitamin D affect bone strength?"]
    assert tuned.dim == base.dim == 384
    vector = tuned.encode(text)
    assert np.isclose(np.linalg.norm(vector), 1.0)
    assert not np.allclose(vector, base.encode(text), atol=1e-4)  # one step moved the weights


def test_fit_refuses_no_examples(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no training examples"):
        fit([], tmp_path / "x", EmbedderTrainingConfig())
    assert not (tmp_path / "x").exists()


def test_command_needs_a_fold_or_all_and_refuses_the_test_split(tmp_path: Path) -> None:
    parser = build_parser()
    base = ["train-embedder", "--data", str(tmp_path), "--out", str(tmp_path / "m")]
    with pytest.raises(SystemExit):
        parser.parse_args(base)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--fold", "1", "--all"])
    args = parser.parse_args([*base, "--fold", "1", "--split", "test"])
    assert args.fold == 1 and args.folds == 5 and not args.all
    err = io.StringIO()
    assert run_train_embedder(args, QUIET, Console(file=err)) == 2
    assert "held out" in err.getvalue()
    assert not (tmp_path / "m").exists()


def test_train_reranker_fold_never_reads_the_held_out_fold(
    dataset: Dataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`train-reranker --fold K` mines and trains on the other folds' queries only."""
    from typing import Any

    from ragstream.evaluation import commands, reranker_training

    seen: list[Dataset] = []

    def fake_train(data: Dataset, *_: Any, **__: Any) -> dict[str, Any]:
        seen.append(data)
        return {}

    monkeypatch.setattr(commands, "load_selected", lambda _args: dataset)
    monkeypatch.setattr(commands, "load_embedder", lambda: None)
    monkeypatch.setattr(commands, "build_index", lambda *_a: None)
    monkeypatch.setattr(reranker_training, "train_reranker", fake_train)
    base = ["train-reranker", "--data", str(tmp_path), "--out", str(tmp_path / "m")]
    parser = build_parser()
    for fold in range(FOLDS):
        args = parser.parse_args([*base, "--folds", str(FOLDS), "--fold", str(fold)])
        assert commands.run_train_reranker(args, QUIET, QUIET) == 0
        held = training_split(list(dataset.queries), folds=FOLDS, fold=fold).held_out
        assert set(seen[-1].queries) == set(dataset.queries) - set(held)
        assert set(seen[-1].qrels) == set(seen[-1].queries)
    assert commands.run_train_reranker(parser.parse_args(base), QUIET, QUIET) == 0
    assert set(seen[-1].queries) == set(dataset.queries)  # no --fold: every query


def test_evaluate_cv_leaves_out_what_a_fold_trained_reranker_saw(
    dataset: Dataset, tmp_path: Path
) -> None:
    from ragstream.evaluation.cv_command import reranker_training_queries

    base = ["evaluate-cv", "--data", str(tmp_path), "--folds", str(FOLDS)]
    args = build_parser().parse_args([*base, "--reranker-train-fold", "1"])
    held = training_split(list(dataset.queries), folds=FOLDS, fold=1).held_out
    assert reranker_training_queries(dataset, args) == set(dataset.queries) - set(held)
    assert reranker_training_queries(dataset, build_parser().parse_args(base)) == set()
