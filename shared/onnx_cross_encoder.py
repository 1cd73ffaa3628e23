"""A CrossEncoder's ONNX export (`ragstream export-onnx --cross-encoder`) on ONNX Runtime: what
`sentence_transformers.CrossEncoder.predict` computes, with no torch.

Pairs are tokenised as transformers does (``[CLS] query [SEP] passage [SEP]``, the longer side
truncated first to `max_seq_length`), scored longest first in batches padded to their own
longest pair, and the logits go through the activation `predict` applies (sigmoid for a
one-label model, as recorded at export). The reranker wraps this in
`services.reranker.cross_encoder.CrossEncoderReranker`. int8 scores one pair per run
(`inputs_per_run`), so a pair's score does not depend on the other passages of its query.
"""

from pathlib import Path

import numpy as np

from shared.onnx_models import (
    MODEL_FILES,
    Precision,
    first_output,
    inputs_per_run,
    load_tokenizer,
    open_session,
    read_manifest,
    run_sorted,
)


class OnnxCrossEncoder:
    """Scores (query, passage) pairs; `predict` takes `CrossEncoder.predict`'s arguments."""

    def __init__(
        self,
        directory: Path,
        *,
        precision: Precision = "fp32",
        max_seq_length: int | None = None,
        threads: int | None = None,
    ) -> None:
        manifest = read_manifest(directory, "cross-encoder", precision)
        self.precision = precision
        self.source = manifest.source
        self.activation = manifest.activation or "identity"
        self.num_labels = manifest.num_labels or 1
        self.inputs = manifest.inputs
        self.max_seq_length = max_seq_length or manifest.max_seq_length
        self.tokenizer = load_tokenizer(directory, self.max_seq_length)
        self.session = open_session(directory / MODEL_FILES[precision], threads)

    def _logits(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        return first_output(self.session, self.inputs, arrays)

    def predict(
        self,
        inputs: list[tuple[str, str]],
        *,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        convert_to_numpy: bool = True,
    ) -> np.ndarray:
        """One float32 score per pair (``[n]`` for one label, else ``[n, labels]``), in input
        order. `show_progress_bar` and `convert_to_numpy` exist for signature compatibility."""
        if not inputs:
            return np.zeros((0,) if self.num_labels == 1 else (0, self.num_labels), np.float32)
        encodings = self.tokenizer.encode_batch(list(inputs))
        per_run = inputs_per_run(self.precision, batch_size)
        logits = run_sorted(encodings, per_run, self._logits)
        if self.activation == "sigmoid":
            logits = 1.0 / (1.0 + np.exp(-logits))
        return logits[:, 0] if self.num_labels == 1 else logits
