"""Where the development datasets are: $RAGSTREAM_DATASETS, else ../shared/datasets."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def datasets_dir() -> Path:
    return Path(os.environ.get("RAGSTREAM_DATASETS", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    path = datasets_dir() / "scifact"
    if not (path / "corpus.jsonl").is_file():
        pytest.skip(f"SciFact not found at {path} (set RAGSTREAM_DATASETS)")
    return path
