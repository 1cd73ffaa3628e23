"""Write docs/evaluation-cv.md from the JSON results of `ragstream evaluate-cv --out` (nothing in
its tables is typed by hand).

    python -m bench.cv_report /tmp/cv_scifact_train.json /tmp/cv_squad_mini.json \
        [--out docs/evaluation-cv.md]
"""

import argparse
import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.evaluation_report import table

Result = Mapping[str, Any]

COMMANDS = """\
```sh
. .venv/bin/activate; export HF_HUB_OFFLINE=1 OPENBLAS_NUM_THREADS=1
D=../shared/datasets
# SciFact train (809 queries). The rerank grid uses the cross-encoder trained by
#   ragstream train-reranker --data $D/scifact --split train --max-docs 1000 --max-queries 200 \\
#     --epochs 1 --out .ragstream/reranker-scifact-1k
# exported by `ragstream export-onnx --cross-encoder --int8 --model <that dir>`, and leaves
# out the 200 queries it was trained on (the --reranker-train-* flags repeat its selection).
ragstream evaluate-cv --data $D/scifact --split train --out /tmp/cv_scifact_train.json \\
  --reranker-model .ragstream/reranker-scifact-1k \\
  --reranker-train-max-docs 1000 --reranker-train-max-queries 200
# SQuAD-mini (288 passages, 1,877 questions); rerank grid on a seeded sample of 300 questions
ragstream evaluate-cv --data $D/squad-mini --split dev --out /tmp/cv_squad_mini.json \\
  --reranker-model .ragstream/reranker-scifact-1k --rerank-max-queries 300
python -m bench.cv_report /tmp/cv_scifact_train.json /tmp/cv_squad_mini.json
```

Each dataset is indexed once (the `ragstream eval` cache) and each query embedded once: its
dense and BM25 chunk lists (300 deep) and the cross-encoder scores are cached beside the index
(`cv-lists-300.json`, `cv-rerank-*.json`), so a rerun only re-scores the grid (about a minute
for SciFact).
"""


def pm(row: Mapping[str, Any]) -> str:
    return f"{row['ndcg@10_mean']:.4f} ± {row['ndcg@10_sd']:.4f}"


def folds(row: Mapping[str, Any]) -> str:
    return " / ".join(f"{v:.3f}" for v in row["ndcg@10_folds"])


def top_rows(part: Mapping[str, Any], n: int) -> list[Mapping[str, Any]]:
    rows = sorted(part["rows"], key=lambda r: -r["ndcg@10_mean"])[:n]
    default = part["default"]
    return rows if default["label"] in {r["label"] for r in rows} else [*rows, default]


def settings_table(part: Mapping[str, Any], n: int = 10) -> list[str]:
    default = part["default"]["label"]
    return table(
        ("setting", "nDCG@10 mean ± sd", "per fold", "fold wins", "R@100", "MRR@10"),
        (
            (r["label"] + (" **(default)**" if r["label"] == default else ""), pm(r), folds(r),
             r["fold_wins"], r["recall@100"], r["mrr@10"])
            for r in top_rows(part, n)
        ),
    )  # fmt: skip


def paired(rule: Mapping[str, Any]) -> tuple[float, float]:
    """Mean and sd over the folds of (held-out score of the rule's pick - default's)."""
    diffs = [f["held_out"] - f["default_held_out"] for f in rule["folds"]]
    return statistics.fmean(diffs), statistics.stdev(diffs)


def folds_table(part: Mapping[str, Any], rules: Sequence[str]) -> list[str]:
    rows = []
    for name in rules:
        rule = part["rules"][name]
        for f in rule["folds"]:
            rows.append((name, f["fold"], f["chosen"], f["train_mean"], f["held_out"],
                         f["default_held_out"]))  # fmt: skip
    return table(("rule", "held-out fold", "chosen on the other 4", "their mean", "held-out",
                  "default, held-out"), rows)  # fmt: skip


def label(choice: Any) -> str:
    return str(choice if isinstance(choice, str) else choice["label"])


def rules_table(parts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    rows = []
    for grid, part in parts.items():
        for name, rule in part["rules"].items():
            diff, sd = paired(rule)
            rows.append((grid, part["settings"], name,
                         f"{rule['held_out_mean']:.4f} ± {rule['held_out_sd']:.4f}",
                         f"{part['default_held_out_mean']:.4f}", f"{diff:+.4f} ± {sd:.4f}",
                         label(rule["final_choice"])))  # fmt: skip
    return table(("grid", "settings", "rule", "held-out nDCG@10", "default", "Δ vs default",
                  "choice on all 5 folds"), rows)  # fmt: skip


def aggregation_table(result: Result) -> list[str]:
    part = result["retrieval"]
    d = part["default"]
    rows = [
        r for r in part["rows"]
        if (r["fusion"], r["alpha"], r["candidates"]) == (d["fusion"], d["alpha"], d["candidates"])
    ]  # fmt: skip
    names = {"max": "max chunk (served)", "decay": "max + λ·Σ 0.5^j others",
             "docbm25": "max + γ·whole-doc BM25"}  # fmt: skip
    return table(
        ("aggregation", "weight", "nDCG@10 mean ± sd", "per fold", "R@100"),
        ((names[r["aggregation"]], r["agg_weight"] if r["aggregation"] != "max" else None,
          pm(r), folds(r), r["recall@100"]) for r in rows),
    )  # fmt: skip


def section(result: Result) -> list[str]:
    name, queries = result["dataset"], result["queries"]
    fusion, retrieval = result["fusion"], result["retrieval"]
    check = result["ranx_check"]
    lines = [
        f"## {name} ({result['split']}): {queries} queries, {result['docs']} docs, "
        f"{result['chunks']} chunks",
        "",
        f"Folds: {fusion['folds']} (seed {fusion['seed']}), sizes {fusion['fold_sizes']}. "
        f"Cross-check: the default ({check['setting']}) scored offline gives nDCG@10 "
        f"{check['numpy_ndcg@10']:.4f}; `ragstream eval`'s `ranx` on the same rankings "
        f"{check['ranx']['ndcg@10']:.4f}.",
        "",
        "### Fusion as served (max-chunk aggregation): best 10 by mean, and the default",
        "",
        *settings_table(fusion),
        "### Choice per fold (fusion as served)",
        "",
        *folds_table(fusion, ("best_mean", "stable")),
        "### Chunk → doc aggregation, at the default fusion",
        "",
        *aggregation_table(result),
        "### Fusion + aggregation: best 10 by mean, and the default",
        "",
        *settings_table(retrieval),
        "### Nested CV: the rule's pick on 4 folds, scored on the 5th (mean ± sd over the 5)",
        "",
        "Δ vs default: the pick's held-out score minus the default's on the same fold, mean ± sd "
        "over the folds.",
        "",
        *rules_table({"fusion (served)": fusion,
                      **{f"+ {k}": v for k, v in result["aggregation"].items()},
                      "fusion + all aggregations": retrieval}),
    ]  # fmt: skip
    if "rerank" in result:
        rr = result["rerank"]
        lines += [
            f"### Rerank ({rr['queries']} queries; cross-encoder `{rr['model']}`, "
            f"{rr['runtime']} {rr['precision']}; {rr['excluded_training_queries']} training "
            f"queries left out; {rr['pairs_scored']} pairs scored)",
            "",
            "Max-chunk aggregation; the reranker scores the first `d` fused chunks and orders "
            "them by `(1 - w)·z(rerank) + w·z(fused)` (w = 0: rerank alone), as the reranker "
            f"stage does. Without rerank the default scores "
            f"{pm(rr['without_rerank_default'])} on these queries.",
            "",
            *settings_table(rr),
            *folds_table(rr, ("best_mean", "stable")),
            *rules_table({"fusion × rerank (and none)": rr, "rerank on only": rr["rerank_on"]}),
        ]  # fmt: skip
    return lines


INTRO = """\
# Retrieval settings by cross-validation

_Generated by `python -m bench.cv_report` from the JSON of `ragstream evaluate-cv`; do not edit
the tables by hand (the `Findings` section is written by hand and kept when regenerating)._

The retrieval defaults were the best score over all 809 SciFact train queries, the same queries
they are then reported on. Here they are chosen and measured by 5-fold cross-validation over
the queries instead: queries are dealt into 5 folds by a seeded hash of their id; for each fold a
rule picks a setting from the other 4 folds and the pick is scored on the held-out fold. The
mean of those 5 held-out scores estimates how a rule's choice does on queries it never saw;
the default is scored on the same folds. Every setting's mean ± sd over the 5 folds is listed.

Scores are computed offline: each query's dense and BM25 chunk lists (300 deep, as
`store.hybrid_search` returns them) are read once, and every (fusion, α, candidates) setting is
the store's own `fuse` in numpy over them (checked equal to `fuse` in
`tests/evaluation/test_cross_validation.py`, and to `ranx` on the default in each run).

Choice rules (`ragstream/evaluation/cross_validation.py`):

- `best_mean`: the highest mean over the folds.
- `stable` (paired one-sd, then least regret): among the settings whose mean deficit to the
  best-mean one is within one sd of that deficit across folds (the folds cannot tell them
  apart), the one whose worst fold is closest to that fold's best setting.
- `most_wins`: best on the most folds.
- `near_lowest_sd`, `one_sd_raw`: the "within one sd, then lowest sd" rule with the paired band
  and with the plain band. Fold means differ mostly by how hard each fold's queries are — the
  same for every setting — so a low sd over folds mostly means doing worse on the easy fold;
  both are listed to show it.

Chunk → doc aggregation alternatives (evaluation only, the serving path is unchanged):
`decay` = best chunk + λ · Σ_j 0.5^(j-1) · (s_j − lowest fused score) over the doc's other
chunks, best first; `docbm25` = best chunk + γ · a whole-document BM25 score (`bm25s`, title +
text unchunked, k1 0.9, b 0.4), normalised as the fusion method normalises a list (min-max,
z-score or 1/(60 + rank)) over its top-`candidates` docs.
"""


FINDINGS = "## Findings"
HAND_WRITTEN_AFTER = "## Fine-tuning the embedder"
"""Sections from this heading on are written by hand too, and kept at the end."""


def kept_findings(path: Path) -> str:
    """The hand-written `## Findings` section of an existing report (kept on regeneration)."""
    if not path.is_file():
        return ""
    text = path.read_text()
    if FINDINGS not in text:
        return ""
    rest = text[text.index(FINDINGS) :]
    end = rest.find("\n## ", len(FINDINGS))
    return (rest if end < 0 else rest[:end]).strip()


def kept_tail(path: Path) -> str:
    """The hand-written sections at the end of an existing report (from `HAND_WRITTEN_AFTER`)."""
    text = path.read_text() if path.is_file() else ""
    return text[text.index(HAND_WRITTEN_AFTER) :].strip() if HAND_WRITTEN_AFTER in text else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/evaluation-cv.md"))
    args = parser.parse_args()
    lines = [INTRO]
    findings = kept_findings(args.out)
    if findings:
        lines += [findings, ""]
    lines += ["## Commands", "", COMMANDS]
    tail = kept_tail(args.out)
    for path in args.results:
        lines += section(json.loads(path.read_text()))
    if tail:
        lines += ["", tail]
    args.out.write_text("\n".join(lines).rstrip() + "\n")


if __name__ == "__main__":
    main()
