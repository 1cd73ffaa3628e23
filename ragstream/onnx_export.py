"""`ragstream export-onnx`: a sentence-transformers bi-encoder (default: the packaged
all-MiniLM-L6-v2) or cross-encoder, exported to ONNX for the torch-free serving path.

A build step, not a serving one: it needs torch and sentence-transformers (the `export`
extra); the stages only read its output, with ONNX Runtime (the `onnx` extra). Steps:
1. trace the transformer with `torch.onnx.export` (TorchScript exporter: no extra packages),
   eager attention, dynamic batch and sequence axes;
2. fuse it with ONNX Runtime's transformer optimiser (attention, embeddings + layer norm,
   skip layer norm, bias GELU) into ``model.onnx`` (fp32);
3. with `--int8`, also ``model-int8.onnx``: `quantize_dynamic` with int8 weights, one scale
   per output channel (activations are quantised per batch at run time);
4. next to them: the tokenizer files, a bi-encoder's ``1_Pooling/config.json`` and the
   manifest ``ragstream-onnx.json`` (`shared.onnx_models.Manifest`).

Where exports live: `--out`, else `shared.onnx_models.default_export_dir` —
``~/.cache/ragstream/onnx/all-MiniLM-L6-v2`` for the packaged model — which is also where the
stages look when `RAG_EMBEDDING_ONNX_PATH` / `RAG_RERANKER_ONNX_PATH` are unset. The stages
never export on demand (that would need torch where it is meant to be absent): run this once
per machine (e.g. from `make install`) or build it into an image and point the path setting at it.
"""

import argparse
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from shared.onnx_models import (
    MANIFEST_FILE,
    MODEL_FILES,
    Manifest,
    OnnxKind,
    Precision,
    default_export_dir,
)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
BI_ENCODER_MODULES = {"Transformer", "Pooling", "Normalize"}
ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity"}
OPSET = 17


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory or name; default: the packaged "
                        "all-MiniLM-L6-v2 (bi-encoder); required with --cross-encoder")  # fmt: skip
    parser.add_argument("--out", help="output directory; default: where the stages look "
                        "(~/.cache/ragstream/onnx/...)")  # fmt: skip
    parser.add_argument("--int8", action="store_true",
                        help="also write model-int8.onnx (dynamic int8 quantisation)")  # fmt: skip
    parser.add_argument("--cross-encoder", action="store_true",
                        help="export a CrossEncoder (sequence classification: logits)")  # fmt: skip


def _quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _graph_inputs(model: Any) -> tuple[str, ...]:
    accepted = inspect.signature(model.forward).parameters
    return tuple(name for name in INPUT_NAMES if name in accepted)


def _trace(model: Any, output: str, inputs: tuple[str, ...], path: Path) -> None:
    """`model` (a transformers model, eval mode) → an ONNX graph at `path` whose only output is
    `output` (``last_hidden_state`` or ``logits``), batch and sequence axes dynamic.

    Attention is traced in its eager form, which ONNX Runtime's transformer optimiser fuses
    (an SDPA trace is left unfused, and runs slower)."""
    import torch

    if callable(setter := getattr(model, "set_attn_implementation", None)):
        setter("eager")

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            result = self.model(**dict(zip(inputs, tensors, strict=True)), return_dict=True)
            return result[output]  # type: ignore[no-any-return]

    # A padded sample: with an all-ones mask transformers may skip masking, and the trace would
    # bake that in.
    ids = torch.full((2, 8), 1000, dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    samples = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in inputs}
    axes[output] = {0: "batch", 1: "sequence"} if output == "last_hidden_state" else {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer flags transformers' shape checks (constant for an encoder) and the
        # exporter's note on negative gather indices (BERT has none).
        warnings.filterwarnings("ignore", module=r"transformers(\.|$)")
        warnings.filterwarnings("ignore", message=".*advanced indexing.*", category=UserWarning)
        # The TorchScript exporter is deprecated since torch 2.9; the dynamo one would add
        # onnxscript to the export extra. Switch when torch drops it.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            Graph().eval(), tuple(samples[name] for name in inputs), str(path),
            input_names=list(inputs), output_names=[output], dynamic_axes=axes,
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )  # fmt: skip


def _optimise(traced: Path, out: Path, config: Any) -> None:
    """Fuse a BERT graph's attention, embedding, layer-norm and GELU subgraphs into ONNX
    Runtime's contrib ops (`onnxruntime.transformers.optimizer`); other architectures are
    left to ONNX Runtime's load-time optimisations."""
    if getattr(config, "model_type", None) != "bert":
        shutil.copyfile(traced, out)
        return
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet_logging():
        optimised = optimize_model(
            str(traced), model_type="bert",
            num_heads=int(config.num_attention_heads), hidden_size=int(config.hidden_size),
        )  # fmt: skip
    optimised.save_model_to_file(str(out))


def _quantise(fp32: Path, int8: Path) -> None:
    """Dynamic quantisation: int8 weights, one scale per output channel (one per tensor loses
    too much: cosine to fp32 ~0.94 against ~0.995 for MiniLM), activations quantised per
    batch at run time."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_logging():  # its advice to pre-process: the optimiser did that
        quantize_dynamic(
            str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # for fused ops
        )  # fmt: skip


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Mute INFO and WARNING records (the optimiser's per-pass lines, the quantiser's advice)."""
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def _session_inputs(model: Path) -> tuple[str, ...]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return tuple(i.name for i in session.get_inputs())


def _precisions(int8: bool) -> tuple[Precision, ...]:
    return ("fp32", "int8") if int8 else ("fp32",)


def export_bi_encoder(model: str | None, out: Path, *, int8: bool = False) -> Manifest:
    """Export a sentence-transformers bi-encoder (Transformer → Pooling → Normalize)."""
    _quiet()
    from sentence_transformers import SentenceTransformer

    from shared.embedding import default_model_path

    source = model or default_model_path()
    st = SentenceTransformer(source, device="cpu")
    kinds = [type(module).__name__ for module in st]
    if kinds[0] != "Transformer" or not set(kinds) <= BI_ENCODER_MODULES:
        raise ValueError(f"{source}: modules {kinds}; only Transformer → Pooling → Normalize")
    first: Any = st[0]
    transformer: Any = first.auto_model.eval()
    max_seq_length = st.max_seq_length
    dim = st.get_embedding_dimension()
    if max_seq_length is None or dim is None:
        raise ValueError(f"{source}: no max_seq_length or embedding dimension")

    def write_files(tmp: Path) -> None:
        st.tokenizer.save_pretrained(str(tmp))
        pooling: Any = next((m for m in st if type(m).__name__ == "Pooling"), None)
        if pooling is not None:
            (tmp / "1_Pooling").mkdir()
            pooling.save(str(tmp / "1_Pooling"))

    manifest = Manifest(
        kind="bi-encoder", source=str(source), max_seq_length=int(max_seq_length),
        precisions=_precisions(int8), inputs=_graph_inputs(transformer), dim=int(dim),
    )  # fmt: skip
    return _write_export(out, manifest, transformer, "last_hidden_state", write_files)


def export_cross_encoder(model: str, out: Path, *, int8: bool = False) -> Manifest:
    """Export a sentence-transformers CrossEncoder (e.g. from `ragstream train-reranker`):
    the sequence-classification logits, and the activation its `predict` applies."""
    _quiet()
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(model, device="cpu")
    activation = ACTIVATIONS.get(type(ce.activation_fn).__name__)
    if activation is None:
        raise ValueError(f"{model}: activation {ce.activation_fn!r} has no ONNX runtime here")
    if ce.model is None:
        raise ValueError(f"{model}: not a transformers cross-encoder")
    transformer: Any = ce.model.eval()
    max_length = ce.max_seq_length or transformer.config.max_position_embeddings
    manifest = Manifest(
        kind="cross-encoder", source=str(model), max_seq_length=int(max_length),
        precisions=_precisions(int8), inputs=_graph_inputs(transformer),
        activation=activation, num_labels=int(ce.num_labels),  # type: ignore[arg-type]
    )  # fmt: skip
    return _write_export(
        out, manifest, transformer, "logits", lambda tmp: ce.tokenizer.save_pretrained(str(tmp))
    )


def _write_export(
    out: Path,
    manifest: Manifest,
    transformer: Any,
    output: str,
    write_files: Callable[[Path], object],
) -> Manifest:
    """Trace, optimise and (`int8`) quantise `transformer` into `out`, with the tokenizer
    (`write_files`) and the manifest. Written into a temporary sibling and swapped in: a stage
    never reads a half-written export, and a failed one leaves the previous export in place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from a stage running as another user
    try:
        traced = tmp / "traced.onnx"
        _trace(transformer, output, manifest.inputs, traced)
        _optimise(traced, tmp / MODEL_FILES["fp32"], transformer.config)
        traced.unlink()
        if "int8" in manifest.precisions:
            _quantise(tmp / MODEL_FILES["fp32"], tmp / MODEL_FILES["int8"])
        write_files(tmp)
        manifest = dataclasses.replace(
            manifest, inputs=_session_inputs(tmp / MODEL_FILES["fp32"])
        )
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=1) + "\n")
        old = out.with_name(f".{out.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def run_export(args: argparse.Namespace, out: Console, err: Console) -> int:
    kind: OnnxKind = "cross-encoder" if args.cross_encoder else "bi-encoder"
    if kind == "cross-encoder" and not args.model:
        err.print("export-onnx --cross-encoder needs --model (a CrossEncoder directory)")
        return 2
    target = Path(args.out) if args.out else default_export_dir(args.model, kind)
    started = time.perf_counter()
    with err.status(f"exporting {args.model or 'all-MiniLM-L6-v2'} to {target}…"):
        if kind == "cross-encoder":
            manifest = export_cross_encoder(args.model, target, int8=args.int8)
        else:
            manifest = export_bi_encoder(args.model, target, int8=args.int8)
    sizes = {p: (target / MODEL_FILES[p]).stat().st_size for p in manifest.precisions}
    summary = {
        "out": str(target), **manifest.to_json(),
        "bytes": sizes, "seconds": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    out.print(json.dumps(summary), soft_wrap=True, markup=False, highlight=False)
    return 0
