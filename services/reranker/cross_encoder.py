"""A local sentence-transformers CrossEncoder as a `Reranker`."""

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from services.reranker.reranking import RerankError

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder


class CrossEncoderReranker:
    """Scores (query, passage) pairs with a CrossEncoder, off the event loop.

    Predictions run one at a time on a dedicated worker thread (torch releases the GIL and
    parallelises each batch itself). A call that gives up (its budget ran out) before its turn
    comes is dropped from the queue; one already running finishes in the background.
    """

    def __init__(self, model: "CrossEncoder", *, name: str, batch_size: int = 32) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cross-encoder")

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int = 32,
        max_seq_length: int | None = None,
    ) -> "CrossEncoderReranker":
        """Load a model by hub name or local path and warm it up with one prediction."""
        import torch
        from sentence_transformers import CrossEncoder

        if threads:
            torch.set_num_threads(threads)
        model = CrossEncoder(name_or_path, device=device, max_length=max_seq_length)
        reranker = cls(model, name=f"cross-encoder:{name_or_path}", batch_size=batch_size)
        reranker.predict("warm-up", ["warm-up"])
        return reranker

    def predict(self, query: str, passages: Sequence[str]) -> list[float]:
        """The model's score for each (query, passage) pair; blocking."""
        raw = self.model.predict(
            [(query, p) for p in passages],
            batch_size=self.batch_size,
            show_progress_bar=False,
            convert_to_numpy=True,
        )
        scores = np.asarray(raw, dtype=np.float64)
        if scores.shape != (len(passages),):
            raise RerankError(
                f"{self.name} outputs scores of shape {scores.shape}; a reranker needs one "
                "score per pair (num_labels=1)",
                transient=False,
            )
        return [float(s) for s in scores]

    async def score(self, query: str, passages: Sequence[str]) -> list[float]:
        if not passages:
            return []
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._worker, self.predict, query, list(passages))
        except RerankError:
            raise
        except Exception as exc:  # torch / tokenizer errors: degrade, never crash the stage
            raise RerankError(
                f"{self.name} rerank failed: {type(exc).__name__}: {exc}", transient=False
            ) from exc

    async def aclose(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
