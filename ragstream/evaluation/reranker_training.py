"""`ragstream train-reranker`: fine-tune a CrossEncoder on labelled queries, hard negatives
mined by the production hybrid retriever.

Start: the packaged all-MiniLM-L6-v2 weights with a fresh one-logit head (`num_labels=1`).
For each positive (query, relevant doc) the group is ``[positive, n hard negatives]``: the
best-ranked chunks of non-relevant docs in the retriever's top-`mine_depth`. The loss is a
softmax cross-entropy over each group (the positive must outscore its negatives), which is
what reordering the top-20 needs. Passages are built by the reranker's own `passage_text`, so
the model trains on exactly what it reads in service. A plain torch loop: no `datasets`.
"""

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from ragstream.evaluation.beir import Dataset
from ragstream.evaluation.indexing import IndexInfo
from ragstream.evaluation.runner import mode_config, retrieve
from services.reranker.reranking import passage_text
from services.reranker.settings import RerankerSettings
from shared.contracts import Query
from shared.embedding import Embedder, default_model_path
from shared.store.lancedb_store import LanceDBStore


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    epochs: int = 2
    negatives: int = 7
    max_seq_length: int = 128
    batch_groups: int = 4
    learning_rate: float = 1.5e-4
    warmup: float = 0.1
    seed: int = 0
    mine_depth: int = 30


@dataclass(frozen=True, slots=True)
class Group:
    query: str
    positive: str
    negatives: tuple[str, ...]


async def mine_groups(
    dataset: Dataset, info: IndexInfo, embedder: Embedder, config: TrainingConfig
) -> list[Group]:
    """One group per (query, relevant doc): its best retrieved chunk (or, if the retriever
    missed it, its title and text), and the top chunks of `negatives` other docs."""
    retriever = mode_config("hybrid").retriever
    max_chars = RerankerSettings().max_passage_chars
    store = LanceDBStore(info.path, embedder.dim)
    groups: list[Group] = []
    try:
        for qid, text in dataset.queries.items():
            query = Query(query_id=qid, text=text, top_k_retrieve=config.mine_depth)
            hits = await retrieve(query, store, embedder, retriever, config.mine_depth)
            relevant = dataset.qrels[qid]
            best: dict[str, str] = {}
            negatives: dict[str, str] = {}
            for hit in hits:
                bucket = best if hit.doc_id in relevant else negatives
                bucket.setdefault(hit.doc_id, passage_text(hit, max_chars))
            hard = tuple(list(negatives.values())[: config.negatives])
            if len(hard) < config.negatives:
                continue
            for doc_id in relevant:
                doc = dataset.corpus[doc_id]
                positive = best.get(doc_id) or f"{doc.title}\n\n{doc.text}"[:max_chars]
                groups.append(Group(text, positive, hard))
    finally:
        await store.close()
    return groups


def fit(groups: Sequence[Group], out: Path, config: TrainingConfig, err: Console) -> float:
    """Train and save the CrossEncoder to `out`; the mean loss of the last epoch."""
    import torch
    from rich.progress import Progress
    from sentence_transformers import CrossEncoder

    torch.manual_seed(config.seed)
    model = CrossEncoder(default_model_path(), num_labels=1, max_length=config.max_seq_length)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
    steps = config.epochs * -(-len(groups) // config.batch_groups)
    warmup = max(1, int(config.warmup * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / (steps - warmup)))
    )
    order = list(groups)
    rng = random.Random(config.seed)
    size = 1 + config.negatives
    last = 0.0
    with Progress(console=err) as progress:
        task = progress.add_task("training", total=steps)
        for _ in range(config.epochs):
            rng.shuffle(order)
            losses: list[float] = []
            for start in range(0, len(order), config.batch_groups):
                batch = order[start : start + config.batch_groups]
                pairs = [(g.query, p) for g in batch for p in (g.positive, *g.negatives)]
                features = model.preprocess(pairs)
                logits = model(features)["scores"].view(len(batch), size)
                target = torch.zeros(len(batch), dtype=torch.long)
                loss = torch.nn.functional.cross_entropy(logits, target)
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                losses.append(float(loss.detach()))
                progress.advance(task)
            last = sum(losses) / max(1, len(losses))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return last


def train_reranker(
    dataset: Dataset,
    info: IndexInfo,
    embedder: Embedder,
    out: Path,
    config: TrainingConfig,
    *,
    err: Console,
) -> dict[str, Any]:
    started = time.perf_counter()
    groups = asyncio.run(mine_groups(dataset, info, embedder, config))
    mined = time.perf_counter()
    loss = fit(groups, out, config, err)
    return {
        "out": str(out),
        "queries": len(dataset.queries),
        "groups": len(groups),
        "mine_seconds": round(mined - started, 1),
        "train_seconds": round(time.perf_counter() - mined, 1),
        "last_epoch_loss": round(loss, 4),
        **asdict(config),
    }
