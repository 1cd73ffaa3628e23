"""The index a bench's stages write to: a fresh LanceDB directory, or a Weaviate collection."""

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from ragstream.weaviate_server import configured_or_local
from shared.settings import StoreSettings

Backend = Literal["lancedb", "weaviate"]


@contextlib.contextmanager
def bench_store(backend: Backend, root: Path) -> Iterator[StoreSettings]:
    """A fresh index under `root` (LanceDB), or a new collection in `WEAVIATE_URL`'s cluster or
    in a local server under `root` (Weaviate)."""
    if backend == "lancedb":
        yield StoreSettings(backend="lancedb", lancedb_path=root / "index")
        return
    with configured_or_local(root / "weaviate") as settings:
        yield settings.model_copy(update={"table": f"Bench_{uuid.uuid4().hex[:8]}"})
