"""A stage process with injected faults, for the reliability suite only (never deployed).

    python -m bench.reliability.faulty chunker|embedder

Runs the real stage app unchanged, except that the chunker raises an unexpected exception on
every document whose id starts with `poison-` (a handler bug that retrying cannot fix) and
sleeps `RAG_FAULT_SLOW_S` seconds on documents whose id starts with `slow-` (a long batch).
"""

import asyncio
import importlib
import os
import sys
import time
from typing import Any

POISON = "poison-"
SLOW = "slow-"


def inject(module: Any) -> None:
    chunker = module.chunker
    original = chunker.chunk
    delay = float(os.environ.get("RAG_FAULT_SLOW_S", "3"))

    def chunk(doc: Any) -> Any:
        if doc.doc_id.startswith(POISON):
            raise RuntimeError("injected fault")
        if doc.doc_id.startswith(SLOW):
            time.sleep(delay)
        return original(doc)

    chunker.chunk = chunk


def main() -> None:
    stage = sys.argv[1]
    module = importlib.import_module(f"services.{stage}.app")
    if stage == "chunker":
        inject(module)
    asyncio.run(module.app.run())
    sys.exit(0)


if __name__ == "__main__":
    main()
