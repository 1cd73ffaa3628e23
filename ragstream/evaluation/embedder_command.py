"""The `ragstream train-embedder` command (parsed in `ragstream.cli`).

Loads the dataset (the train split: the test split is held out and refused), mines hard
negatives for the training queries from the evaluation index of the current embedder, trains,
saves. With `--fold K`, then measures the base and the tuned model on fold K's queries only,
dense and default hybrid (nDCG@10, R@100), the tuned model over the corpus re-embedded by it
(an index cached by the tuned weights' hash).
"""

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ragstream.evaluation.beir import Dataset
from ragstream.evaluation.commands import (
    build_index,
    embedding_summary,
    evaluate_mode,
    load_embedder,
    load_selected,
    progress_bar,
    quiet_logs,
)
from ragstream.evaluation.embedder_training import (
    EmbedderTrainingConfig,
    Split,
    model_digest,
    only_queries,
    train_embedder,
    training_split,
)
from ragstream.evaluation.indexing import IndexInfo, ensure_index
from ragstream.evaluation.runner import Mode, mode_config
from shared.embedding import Embedder
from shared.settings import EmbeddingSettings

MODES: tuple[Mode, ...] = ("dense", "hybrid")
SHOWN = ("ndcg@10", "recall@100")


def tuned_index(
    dataset: Dataset, model: Path, cache_dir: Path, err: Console
) -> tuple[Embedder, IndexInfo]:
    """The corpus embedded by the tuned model (torch), cached under `tuned/<weights hash>`."""
    from shared.embedding import load_embedder as load

    settings = EmbeddingSettings(model=str(model.resolve()), backend="torch")
    embedder = load(settings)
    with progress_bar(err) as progress:
        task = progress.add_task("indexing (tuned model)", total=len(dataset.corpus))
        info = ensure_index(
            dataset, cache_dir / "tuned" / model_digest(model), embedder,
            on_progress=lambda n: progress.advance(task, n), embedding_settings=settings,
        )  # fmt: skip
        progress.update(task, completed=len(dataset.corpus))
    return embedder, info


def measure(
    held_out: Dataset, info: IndexInfo, embedder: Embedder, err: Console
) -> dict[str, dict[str, float]]:
    """Per mode (dense, hybrid with the retriever's defaults): the held-out queries' metrics."""
    out: dict[str, dict[str, float]] = {}
    for mode in MODES:
        _, metrics = evaluate_mode(
            held_out, info, embedder, mode_config(mode), k=10, budget_ms=None, err=err
        )
        out[mode] = {m: round(float(metrics[m]), 4) for m in SHOWN}
    return out


def evaluate_fold(
    dataset: Dataset,
    split: Split,
    base: tuple[Embedder, IndexInfo],
    model: Path,
    *,
    cache_dir: Path,
    err: Console,
) -> dict[str, Any]:
    held_out = only_queries(dataset, split.held_out)
    before = measure(held_out, base[1], base[0], err)
    embedder, info = tuned_index(dataset, model, cache_dir, err)
    after = measure(held_out, info, embedder, err)
    return {
        "held_out_queries": len(held_out.queries),
        "tuned_index_seconds": round(info.seconds, 1),
        "tuned_index_cached": info.cached,
        **{
            mode: {
                "base": before[mode], "tuned": after[mode],
                "gain": {m: round(after[mode][m] - before[mode][m], 4) for m in SHOWN},
            }
            for mode in MODES
        },
    }  # fmt: skip


def table(result: dict[str, Any]) -> Table:
    grid = Table(title=f"held-out fold {result['fold']} ({result['held_out_queries']} queries)")
    for column in ("mode", "metric", "base", "tuned", "gain"):
        grid.add_column(column, justify="left" if column in ("mode", "metric") else "right")
    for mode in MODES:
        row = result[mode]
        for metric in SHOWN:
            grid.add_row(
                mode, metric, f"{row['base'][metric]:.4f}", f"{row['tuned'][metric]:.4f}",
                f"{row['gain'][metric]:+.4f}",
            )  # fmt: skip
    return grid


def run_train_embedder(args: argparse.Namespace, out: Console, err: Console) -> int:
    if args.split == "test":
        err.print("train-embedder: the test split is held out; train on --split train")
        return 2
    quiet_logs()
    dataset = load_selected(args)
    split = training_split(
        list(dataset.queries), folds=args.folds, fold=None if args.all else args.fold,
        seed=args.cv_seed,
    )  # fmt: skip
    embedder = load_embedder()
    info = build_index(args, dataset, embedder, err)
    config = EmbedderTrainingConfig(
        epochs=args.epochs, batch_size=args.batch_size, negatives=args.negatives,
        skip=args.skip, max_seq_length=args.max_seq_length, learning_rate=args.lr,
        seed=args.seed, mine_depth=args.mine_depth,
    )  # fmt: skip
    model = Path(args.out)
    summary: dict[str, Any] = {
        "dataset": dataset.name, "split": args.split, "folds": args.folds,
        "fold": None if args.all else args.fold, "cv_seed": args.cv_seed,
        "base_embedding": embedding_summary(),
        **train_embedder(
            dataset, split, info, embedder, model, config=config,
            base_model=EmbeddingSettings().model, err=err,
        ),
    }  # fmt: skip
    if split.held_out and not args.no_evaluate:
        result = evaluate_fold(
            dataset, split, (embedder, info), model, cache_dir=Path(args.cache_dir), err=err
        )
        summary.update(result)
        err.print(table(summary))
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(summary, indent=1) + "\n")
    out.print(json.dumps(summary), soft_wrap=True, markup=False, highlight=False)
    return 0
