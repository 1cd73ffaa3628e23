"""A local cross-encoder as a `Reranker`: a sentence-transformers CrossEncoder on torch, or its
ONNX export on ONNX Runtime (`shared.onnx_cross_encoder`, no torch)."""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.reranker.reranking import RerankError
from services.reranker.worker import ScoringWorker

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder

    from shared.onnx_cross_encoder import OnnxCrossEncoder
    from shared.onnx_models import Precision


class CrossEncoderReranker:
    """Scores (query, passage) pairs with a CrossEncoder, off the event loop.

    Predictions run one job at a time on a dedicated worker thread (torch releases the GIL and
    parallelises each batch itself), in chunks of `chunk_size` pairs: a call that gives up (its
    budget or its query's deadline ran out) stops its scoring after the current chunk, and one
    given up before its turn never runs (`services.reranker.worker`).
    """

    def __init__(
        self,
        model: "CrossEncoder | OnnxCrossEncoder",
        *,
        name: str,
        batch_size: int = 32,
        chunk_size: int = 8,
    ) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.worker = ScoringWorker(self.predict, chunk_size=chunk_size, name="cross-encoder")

    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        device: str = "cpu",
        threads: int | None = None,
        batch_size: int = 32,
        chunk_size: int = 8,
        max_seq_length: int | None = None,
    ) -> "CrossEncoderReranker":
        """Load a model by hub name or local path and warm it up with one prediction."""
        import torch
        from sentence_transformers import CrossEncoder

        if threads:
            torch.set_num_threads(threads)
        model = CrossEncoder(name_or_path, device=device, max_length=max_seq_length)
        reranker = cls(
            model, name=f"cross-encoder:{name_or_path}", batch_size=batch_size,
            chunk_size=chunk_size,
        )  # fmt: skip
        reranker.predict("warm-up", ["warm-up"])
        return reranker

    @classmethod
    def load_onnx(
        cls,
        directory: Path,
        *,
        precision: "Precision" = "fp32",
        threads: int | None = None,
        batch_size: int = 32,
        chunk_size: int = 8,
        max_seq_length: int | None = None,
    ) -> "CrossEncoderReranker":
        """Load an export of `ragstream export-onnx --cross-encoder` and warm it up."""
        from shared.onnx_cross_encoder import OnnxCrossEncoder

        model = OnnxCrossEncoder(
            directory, precision=precision, max_seq_length=max_seq_length, threads=threads
        )
        reranker = cls(
            model, name=f"cross-encoder-onnx-{precision}:{model.source}", batch_size=batch_size,
            chunk_size=chunk_size,
        )  # fmt: skip
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
        try:
            return await self.worker.score(query, passages)
        except RerankError:
            raise
        except Exception as exc:  # runtime / tokenizer errors: degrade, never crash the stage
            raise RerankError(
                f"{self.name} rerank failed: {type(exc).__name__}: {exc}", transient=False
            ) from exc

    async def aclose(self) -> None:
        self.worker.close()
