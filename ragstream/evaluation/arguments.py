"""Arguments of `ragstream eval` and `ragstream train-reranker` (light: no model imports)."""

import argparse
from pathlib import Path

DEFAULT_CACHE = Path(".ragstream/eval-cache")
MODES = ("bm25", "dense", "hybrid", "hybrid+rerank", "default")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="BEIR folder (or SQuAD-mini folder)")
    parser.add_argument("--split", default="train", help="qrels/<split>.tsv")
    parser.add_argument("--max-docs", type=int, help="corpus slice: queries' qrels docs + padding")
    parser.add_argument("--max-queries", type=int, help="keep the first N judged queries")
    parser.add_argument("--half", choices=("a", "b"), help="only this half of the queries")
    parser.add_argument("--seed", type=int, default=0, help="seed of the query halves")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="index cache")
    parser.add_argument("--via-streams", action="store_true",
                        help="index through real chunker+embedder processes on Redis")  # fmt: skip
    parser.add_argument("--redis-url", help="for --via-streams; default: an embedded server")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--mode", default="default",
                        choices=MODES)  # fmt: skip
    parser.add_argument("--k", type=int, default=10, help="cutoff of nDCG/recall/MRR")
    parser.add_argument("--out", help="also write the JSON result here")
    parser.add_argument("--reranker-model", help="cross-encoder path (hybrid+rerank)")
    parser.add_argument("--fusion", choices=("zscore", "rrf", "minmax"), help="override")
    parser.add_argument("--alpha", type=float, help="override the dense weight")
    parser.add_argument("--candidates", type=int, help="override the per-list depth")
    parser.add_argument("--store", choices=("lancedb", "weaviate"), default="lancedb",
                        help="the index queried; weaviate: WEAVIATE_URL, else a local server, "
                        "loaded from the cached index")  # fmt: skip
    parser.add_argument("--weaviate-hybrid", choices=("client", "native"),
                        help="--store weaviate: override RAG_STORE_WEAVIATE_HYBRID")  # fmt: skip
    parser.add_argument("--rerank-budget-ms", type=float,
                        help="apply this budget (default: none, latency is reported)")  # fmt: skip


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, help="directory to save the CrossEncoder in")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--negatives", type=int, default=7, help="hard negatives per positive")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--batch-groups", type=int, default=4, help="groups per step")
    parser.add_argument("--lr", type=float, default=1.5e-4)
    add_fold_arguments(parser, required=False)


def add_cv_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--cv-seed", type=int, default=0, help="seed of the fold split")
    parser.add_argument("--out", help="also write the full JSON result (every setting) here")
    parser.add_argument("--top", type=int, default=15, help="settings shown in the table")
    parser.add_argument("--reranker-model", help="cross-encoder path: adds the rerank grid")
    parser.add_argument("--reranker-runtime", choices=("torch", "onnx"), default="onnx")
    parser.add_argument("--reranker-precision", choices=("fp32", "int8"), default="int8")
    parser.add_argument("--rerank-max-queries", type=int, help="rerank grid on the first N only")
    group = parser.add_argument_group(
        "reranker training queries",
        "the selection `train-reranker` trained the model on: those queries are left out of the "
        "rerank grid (only queries it never saw measure it)",
    )
    group.add_argument("--reranker-train-max-docs", type=int)
    group.add_argument("--reranker-train-max-queries", type=int)
    group.add_argument("--reranker-train-half", choices=("a", "b"))
    group.add_argument("--reranker-train-seed", type=int, default=0)
    group.add_argument("--reranker-train-fold", type=int,
                       help="trained with `--fold K` (same --folds/--cv-seed): on every fold "
                       "but K")  # fmt: skip
    group.add_argument("--reranker-train-all", action="store_true",
                       help="trained on every query (then the rerank grid has none)")  # fmt: skip


def add_cv_parser(sub: "argparse._SubParsersAction[argparse.ArgumentParser]"
                  ) -> argparse.ArgumentParser:  # fmt: skip
    parser = sub.add_parser("evaluate-cv", help="choose retrieval settings by k-fold "
                            "cross-validation over the queries (JSON + table)")  # fmt: skip
    add_cv_arguments(parser)
    return parser


def add_fold_arguments(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """`--folds/--fold` (train on the other folds' queries; `evaluate-cv`'s split) and `--all`."""
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--cv-seed", type=int, default=0, help="seed of the fold split")
    which = parser.add_mutually_exclusive_group(required=required)
    which.add_argument("--fold", type=int,
                       help="hold this fold out: train on the other folds' queries")  # fmt: skip
    which.add_argument("--all", action="store_true", help="train on every query (to ship)")


def add_train_embedder_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    add_fold_arguments(parser, required=True)
    parser.add_argument("--out", required=True,
                        help="directory to save the sentence-transformers model in")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32, help="(query, positive) per step")
    parser.add_argument("--negatives", type=int, default=1, help="hard negatives per positive")
    parser.add_argument("--skip", type=int, default=2,
                        help="top non-relevant retrieved docs skipped (likely unjudged "
                        "positives)")  # fmt: skip
    parser.add_argument("--max-seq-length", type=int, default=128, help="of training texts")
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--mine-depth", type=int, default=30, help="retrieved chunks mined")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="--fold: skip measuring base vs tuned on the held-out fold "
                        "(which re-embeds the corpus with the tuned model)")  # fmt: skip
    parser.add_argument("--report", help="also write the JSON summary here")
