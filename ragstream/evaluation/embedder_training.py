"""`ragstream train-embedder`: fine-tune the bi-encoder on labelled (query, relevant doc) pairs,
with in-batch negatives and hard negatives mined by the production hybrid retriever.

Start: the embedding model in use (default: the packaged all-MiniLM-L6-v2). One example per
(query, relevant doc) of the *training* queries: ``(query, positive, n hard negatives)``. The
positive is the relevant doc's best retrieved chunk (or, if the retriever missed it, its title
and text); the hard negatives are the best-ranked chunks of non-relevant docs in the retriever's
top-`mine_depth`, after skipping the first `skip` of them (on SciFact the very top non-relevant
docs are often unjudged relevant ones). Passages are built by `embedding_text`, the text the
embedder indexes. The loss is sentence-transformers' `MultipleNegativesRankingLoss`: each query
must score its positive above every other passage of the batch (the other queries' positives and
all the hard negatives). Batches never hold one query or one positive doc twice, so an in-batch
"negative" is never a positive of the same query. A plain torch loop: no `datasets`.

Fold discipline: `training_split` deals the query ids into folds with
`cross_validation.kfold` (the split `evaluate-cv` uses) and trains on every fold but the held-out
one; `evaluate_fold` then measures base and tuned model on the held-out fold's queries only.
"""

import asyncio
import hashlib
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ragstream.evaluation import cross_validation as cv
from ragstream.evaluation.beir import Dataset
from ragstream.evaluation.indexing import IndexInfo
from ragstream.evaluation.runner import mode_config, retrieve
from shared.chunk_text import embedding_text
from shared.contracts import Query
from shared.embedding import Embedder, default_model_path
from shared.store.lancedb_store import LanceDBStore

Tick = Callable[[int, float], None]
"""Called after each training step with (steps done, that step's loss)."""


@dataclass(frozen=True, slots=True)
class EmbedderTrainingConfig:
    epochs: int = 1
    batch_size: int = 32
    negatives: int = 1
    """Hard negatives per (query, positive)."""
    skip: int = 2
    """Non-relevant retrieved docs skipped before the hard negatives are taken."""
    max_seq_length: int = 128
    learning_rate: float = 2e-5
    warmup: float = 0.1
    scale: float = 20.0
    """MultipleNegativesRankingLoss's similarity scale (1 / temperature)."""
    seed: int = 0
    mine_depth: int = 30


@dataclass(frozen=True, slots=True)
class Example:
    query_id: str
    doc_id: str
    """The positive's doc."""
    query: str
    positive: str
    negatives: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Split:
    train: list[str]
    held_out: list[str]
    """Empty when training on every query (`fold=None`)."""


def training_split(
    query_ids: Sequence[str], *, folds: int = 5, fold: int | None = None, seed: int = 0
) -> Split:
    """The query ids to train on and the held-out fold (`cross_validation.kfold`'s split);
    `fold=None`: every query, nothing held out."""
    if fold is None:
        return Split(sorted(set(query_ids)), [])
    if not 0 <= fold < folds:
        raise ValueError(f"--fold must be in 0..{folds - 1}, got {fold}")
    dealt = cv.kfold(query_ids, folds, seed)
    train = sorted(q for f, members in enumerate(dealt) if f != fold for q in members)
    return Split(train, sorted(dealt[fold]))


def only_queries(dataset: Dataset, query_ids: Collection[str]) -> Dataset:
    """`dataset` with only these queries (the whole corpus kept)."""
    keep = set(query_ids)
    queries = {q: t for q, t in dataset.queries.items() if q in keep}
    return Dataset(
        dataset.name, dataset.split, dataset.corpus, queries, {q: dataset.qrels[q] for q in queries}
    )


async def mine_examples(
    dataset: Dataset,
    train_ids: Collection[str],
    info: IndexInfo,
    embedder: Embedder,
    config: EmbedderTrainingConfig,
) -> list[Example]:
    """One example per (training query, relevant doc), hard negatives from the index.

    Only the queries of `train_ids` are read or retrieved for."""
    retriever = mode_config("hybrid").retriever
    store = LanceDBStore(info.path, embedder.dim)
    wanted = set(train_ids)
    examples: list[Example] = []
    try:
        for qid, text in dataset.queries.items():
            if qid not in wanted:
                continue
            query = Query(query_id=qid, text=text, top_k_retrieve=config.mine_depth)
            hits = await retrieve(query, store, embedder, retriever, config.mine_depth)
            relevant = dataset.qrels[qid]
            best: dict[str, str] = {}
            others: dict[str, str] = {}
            for hit in hits:
                bucket = best if hit.doc_id in relevant else others
                bucket.setdefault(hit.doc_id, embedding_text(hit.title, hit.section_path, hit.text))
            hard = tuple(list(others.values())[config.skip :][: config.negatives])
            if len(hard) < config.negatives:
                continue
            for doc_id in relevant:
                doc = dataset.corpus[doc_id]
                positive = best.get(doc_id) or embedding_text(doc.title, (), doc.text)
                examples.append(Example(qid, doc_id, text, positive, hard))
    finally:
        await store.close()
    return examples


def batches(examples: Sequence[Example], size: int, rng: random.Random) -> list[list[Example]]:
    """Shuffled batches of `size` in which no query and no positive doc appears twice (an
    example that would repeat one waits for a later batch)."""
    pending = list(examples)
    rng.shuffle(pending)
    out: list[list[Example]] = []
    while pending:
        batch: list[Example] = []
        queries: set[str] = set()
        docs: set[str] = set()
        rest: list[Example] = []
        for example in pending:
            if len(batch) < size and example.query_id not in queries and example.doc_id not in docs:
                batch.append(example)
                queries.add(example.query_id)
                docs.add(example.doc_id)
            else:
                rest.append(example)
        out.append(batch)
        pending = rest
    return out


def fit(
    examples: Sequence[Example],
    out: Path,
    config: EmbedderTrainingConfig,
    *,
    base_model: str | None = None,
    on_step: Callable[[int], Tick] | None = None,
) -> float:
    """Train the bi-encoder and save it (a sentence-transformers directory) to `out`; the mean
    loss of the last epoch. `on_step(total steps)` returns the per-step progress callback."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    if not examples:
        raise ValueError("no training examples (too few queries, or too few hard negatives)")
    torch.manual_seed(config.seed)
    model = SentenceTransformer(base_model or default_model_path(), device="cpu")
    model.max_seq_length = config.max_seq_length
    loss_fn = MultipleNegativesRankingLoss(model, scale=config.scale)
    rng = random.Random(config.seed)
    epochs = [batches(examples, config.batch_size, rng) for _ in range(config.epochs)]
    steps = sum(len(e) for e in epochs)
    warmup = max(1, int(config.warmup * steps))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))),
    )
    tick = on_step(steps) if on_step is not None else None
    model.train()
    done = 0
    last = 0.0
    for epoch in epochs:
        losses: list[float] = []
        for batch in epoch:
            columns = [
                [e.query for e in batch],
                [e.positive for e in batch],
                *([e.negatives[i] for e in batch] for i in range(config.negatives)),
            ]
            features = [model.preprocess(texts) for texts in columns]
            loss = loss_fn(features, torch.empty(0))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(float(loss.detach()))
            done += 1
            if tick is not None:
                tick(done, losses[-1])
        last = sum(losses) / max(1, len(losses))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return last


@dataclass
class StepReporter:
    """Training progress: a rich bar with the time left on a terminal, else a structlog JSON
    line every `every` steps (and the last) with the loss, elapsed and estimated seconds left."""

    err: Console
    every: int = 5

    def __call__(self, steps: int) -> Tick:
        if self.err.is_terminal:
            return self._rich(steps)
        return self._log(steps)

    def _rich(self, steps: int) -> Tick:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("loss {task.fields[loss]}"),
            console=self.err,
        )  # fmt: skip
        progress.start()
        task = progress.add_task("training", total=steps, loss="-")

        def tick(done: int, loss: float) -> None:
            progress.update(task, completed=done, loss=f"{loss:.4f}")
            if done >= steps:
                progress.stop()

        return tick

    def _log(self, steps: int) -> Tick:
        from shared.logging import get_logger

        log = get_logger("ragstream.train_embedder")
        started = time.perf_counter()

        def tick(done: int, loss: float) -> None:
            if done % self.every and done != steps:
                return
            elapsed = time.perf_counter() - started
            log.warning(
                "training", step=done, steps=steps, loss=round(loss, 4),
                elapsed_s=round(elapsed, 1),
                eta_s=round(elapsed / done * (steps - done), 1),
            )  # fmt: skip

        return tick


def model_digest(path: Path) -> str:
    """A content hash of a saved model's weights (the tuned model's index cache key: the same
    output directory retrained is a different model)."""
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin")):
        with file.open("rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def train_embedder(
    dataset: Dataset,
    split: Split,
    info: IndexInfo,
    embedder: Embedder,
    out: Path,
    *,
    config: EmbedderTrainingConfig,
    base_model: str | None = None,
    err: Console,
) -> dict[str, Any]:
    """Mine (on the training queries only), train, save; a summary."""
    started = time.perf_counter()
    examples = asyncio.run(mine_examples(dataset, split.train, info, embedder, config))
    leaked = {e.query_id for e in examples} & set(split.held_out)
    if leaked:  # cannot happen: mine_examples reads only split.train
        raise AssertionError(f"held-out queries in training: {sorted(leaked)[:5]}")
    mined = time.perf_counter()
    loss = fit(examples, out, config, base_model=base_model, on_step=StepReporter(err))
    return {
        "out": str(out),
        "train_queries": len(split.train),
        "held_out_queries": len(split.held_out),
        "examples": len(examples),
        "mine_seconds": round(mined - started, 1),
        "train_seconds": round(time.perf_counter() - mined, 1),
        "last_epoch_loss": round(loss, 4),
        **asdict(config),
    }
