"""The bi-encoder on ONNX Runtime: an `Embedder` with no torch and no sentence-transformers.

What `SentenceTransformer.encode` does, in numpy around an exported transformer: the fast
tokenizer from ``tokenizer.json`` (truncated to `max_seq_length`), the transformer's token
embeddings from an ONNX Runtime session, pooling as ``1_Pooling/config.json`` says (mean over
the attention mask for MiniLM), then L2 normalisation. Texts are encoded longest first in
batches padded to their own longest text, and returned in input order; int8 encodes one text
per run (`inputs_per_run`), so a text's vector does not depend on the texts beside it.
"""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shared.onnx_models import (
    MODEL_FILES,
    Precision,
    default_export_dir,
    first_output,
    inputs_per_run,
    load_tokenizer,
    open_session,
    read_manifest,
    run_sorted,
)
from shared.settings import EmbeddingSettings
from shared.store.records import Vector

POOLING_MODES = ("mean", "cls", "max")
NORM_EPS = 1e-12  # torch.nn.functional.normalize's


def pooling_mode(directory: Path) -> str:
    """The pooling ``1_Pooling/config.json`` names (sentence-transformers 6's ``pooling_mode``,
    or the older ``pooling_mode_*_tokens`` switches); mean if there is no such file."""
    path = directory / "1_Pooling" / "config.json"
    if not path.is_file():
        return "mean"
    config = json.loads(path.read_text())
    if "pooling_mode" in config:
        mode = config["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:
        legacy = {
            "pooling_mode_mean_tokens": "mean",
            "pooling_mode_cls_token": "cls",
            "pooling_mode_max_tokens": "max",
        }
        modes = [legacy.get(key, key) for key, on in config.items()
                 if key.startswith("pooling_mode") and on is True]  # fmt: skip
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ValueError(f"{path}: pooling {modes}; supported: one of {POOLING_MODES}")
    return str(modes[0])


def pool(tokens: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """``[batch, seq, dim]`` token embeddings → ``[batch, dim]``, padding excluded."""
    if mode == "cls":
        return np.asarray(tokens[:, 0])
    weights = mask[:, :, None].astype(tokens.dtype)
    if mode == "max":
        return np.asarray(np.where(weights > 0, tokens, np.finfo(tokens.dtype).min).max(axis=1))
    summed = (tokens * weights).sum(axis=1)
    return np.asarray(summed / np.clip(weights.sum(axis=1), 1e-9, None))


def normalised(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, NORM_EPS))


class OnnxEmbedder:
    """An exported sentence-transformers bi-encoder on ONNX Runtime (CPU)."""

    def __init__(
        self,
        directory: Path,
        *,
        precision: Precision = "fp32",
        batch_size: int = 64,
        max_seq_length: int | None = None,
        threads: int | None = None,
    ) -> None:
        manifest = read_manifest(directory, "bi-encoder", precision)
        if manifest.dim is None:
            raise ValueError(f"{directory}: the manifest has no embedding dimension")
        self.dim = manifest.dim
        self.name = f"onnx-{precision}:{manifest.source}"
        self.batch_size = inputs_per_run(precision, batch_size)
        self.max_seq_length = max_seq_length or manifest.max_seq_length
        self.inputs = manifest.inputs
        self.pooling = pooling_mode(directory)
        self.tokenizer = load_tokenizer(directory, self.max_seq_length)
        self.session = open_session(directory / MODEL_FILES[precision], threads)
        self.encode(["warm-up"])  # the first run allocates ORT's buffers; not a request

    @classmethod
    def from_settings(cls, settings: EmbeddingSettings) -> "OnnxEmbedder":
        return cls(
            settings.onnx_path or default_export_dir(settings.model),
            precision=settings.onnx_precision,
            batch_size=settings.batch_size,
            max_seq_length=settings.max_seq_length,
            threads=settings.threads,
        )

    def _embed(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        tokens = first_output(self.session, self.inputs, arrays)
        return pool(tokens, arrays["attention_mask"], self.pooling)

    def encode(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        vectors = run_sorted(encodings, self.batch_size, self._embed)
        return normalised(vectors).astype(np.float32, copy=False)
