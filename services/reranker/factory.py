"""Pick the reranker backend the settings name."""

import os

from services.reranker.reranking import Reranker
from services.reranker.settings import DEFAULT_COHERE_MODEL, RerankerSettings


def build_reranker(settings: RerankerSettings) -> Reranker | None:
    """The configured backend, ready to score; None for `backend=none` (fused order).

    A cross-encoder is loaded (and warmed up) here, so this may take seconds.
    """
    if settings.backend == "none":
        return None
    if settings.backend == "cross-encoder" and settings.runtime == "onnx":
        if not settings.model and settings.onnx_path is None:
            raise ValueError(
                "RAG_RERANKER_RUNTIME=onnx needs RAG_RERANKER_ONNX_PATH (an export of "
                "`ragstream export-onnx --cross-encoder`) or the RAG_RERANKER_MODEL it was "
                "exported from"
            )
        from services.reranker.cross_encoder import CrossEncoderReranker
        from shared.onnx_models import default_export_dir

        return CrossEncoderReranker.load_onnx(
            settings.onnx_path or default_export_dir(settings.model, "cross-encoder"),
            precision=settings.onnx_precision,
            threads=settings.threads,
            batch_size=settings.predict_batch_size,
            chunk_size=settings.chunk_pairs,
            max_seq_length=settings.max_seq_length,
        )
    if settings.backend == "cross-encoder":
        if not settings.model:
            raise ValueError(
                "RAG_RERANKER_BACKEND=cross-encoder needs RAG_RERANKER_MODEL: a CrossEncoder "
                "name (e.g. cross-encoder/ms-marco-MiniLM-L6-v2) or a local directory"
            )
        from services.reranker.cross_encoder import CrossEncoderReranker

        return CrossEncoderReranker.load(
            settings.model,
            device=settings.device,
            threads=settings.threads,
            batch_size=settings.predict_batch_size,
            chunk_size=settings.chunk_pairs,
            max_seq_length=settings.max_seq_length,
        )
    if settings.backend == "cohere":
        api_key = (
            settings.cohere_api_key.get_secret_value()
            if settings.cohere_api_key is not None
            else os.environ.get("CO_API_KEY")
        )
        if not api_key:
            raise ValueError(
                "RAG_RERANKER_BACKEND=cohere needs RAG_RERANKER_COHERE_API_KEY (or CO_API_KEY); "
                "gateways that ignore keys accept any value"
            )
        from services.reranker.cohere_reranker import CohereReranker

        return CohereReranker(
            model=settings.model or DEFAULT_COHERE_MODEL,
            api_key=api_key,
            base_url=settings.cohere_base_url,
            timeout_s=settings.timeout_s,
            max_retries=settings.max_retries,
            retry_backoff_s=settings.retry_backoff_s,
        )
    raise ValueError(f"unknown reranker backend {settings.backend!r}")
