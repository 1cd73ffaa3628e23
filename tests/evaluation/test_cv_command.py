"""`ragstream evaluate-cv` end to end on a 50-doc slice of SciFact train (20 queries)."""

import argparse
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from bench.cv_report import kept_findings, section
from ragstream.cli import build_parser
from ragstream.evaluation.cv_command import run_cv


def test_report_keeps_the_hand_written_findings(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    assert kept_findings(report) == ""
    report.write_text("# T\n\nintro\n\n## Findings\n\nkeep me\n\n## Commands\n\nx\n")
    assert kept_findings(report) == "## Findings\n\nkeep me"
    report.write_text("# T\n\n## Commands\n")
    assert kept_findings(report) == ""


@pytest.mark.slow
def test_evaluate_cv_on_a_slice(scifact_dir: Path, tmp_path: Path) -> None:
    out_file = tmp_path / "cv.json"
    args: argparse.Namespace = build_parser().parse_args(
        ["evaluate-cv", "--data", str(scifact_dir), "--split", "train", "--max-docs", "50",
         "--max-queries", "20", "--cache-dir", str(tmp_path / "cache"), "--out", str(out_file)]
    )  # fmt: skip
    stdout = io.StringIO()
    assert run_cv(args, Console(file=stdout, width=80), Console(file=io.StringIO())) == 0
    summary = json.loads(stdout.getvalue().strip().splitlines()[-1])
    full = json.loads(out_file.read_text())
    assert summary["queries"] == full["queries"] == 20
    # the numpy scoring of the default setting is `ranx`'s
    check = full["ranx_check"]
    assert check["numpy_ndcg@10"] == pytest.approx(check["ranx"]["ndcg@10"], abs=1e-4)
    retrieval = full["retrieval"]
    assert retrieval["fold_sizes"] == [4, 4, 4, 4, 4]
    labels = {r["label"] for r in retrieval["rows"]}
    assert len(labels) == retrieval["settings"]
    assert {r["aggregation"] for r in retrieval["rows"]} == {"max", "decay", "docbm25"}
    for rule in retrieval["rules"].values():
        assert len(rule["folds"]) == 5
        assert all(f["chosen"] in labels for f in rule["folds"])
    assert full["fusion"]["settings"] < retrieval["settings"]
    assert "rerank" not in full
    markdown = "\n".join(section(full))
    assert "| minmax α=0.5 c=300 **(default)** |" in markdown
    # a second run reads the cached lists (same result)
    stdout2 = io.StringIO()
    run_cv(args, Console(file=stdout2, width=80), Console(file=io.StringIO()))
    assert json.loads(stdout2.getvalue().strip().splitlines()[-1]) == summary
