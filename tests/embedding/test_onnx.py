"""The bi-encoder's ONNX runtime against sentence-transformers: exported here (once per test
session, fp32 and int8, by the project's own exporter) from the packaged all-MiniLM-L6-v2,
and compared row by row with `SentenceTransformer.encode` on the same texts."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ragstream.cli import build_parser, cmd_export_onnx
from shared.embedding import SentenceTransformerEmbedder, load_embedder
from shared.onnx_embedding import OnnxEmbedder, pooling_mode
from shared.onnx_models import (
    MANIFEST_FILE,
    MODEL_FILES,
    OnnxModelMissing,
    default_export_dir,
    length_sorted_batches,
)
from shared.settings import EmbeddingSettings

TOPICS = [
    "Tumour cells evade the immune system by expressing checkpoint proteins.",
    "Espresso is brewed by forcing hot water through finely ground coffee.",
    "Redis streams let consumer groups share entries between workers.",
    "The knight moves in an L shape and can jump over other pieces.",
    "Sourdough bread rises slowly because of wild yeast and lactic bacteria.",
    "Volcanic eruptions release magma, ash and sulphur dioxide into the air.",
    "A tiebreak in tennis is played to seven points with a two-point margin.",
]


def lengthened(sentence: str, repeats: int) -> str:
    return " ".join([sentence] * repeats)


# Each topic twice, short and long (up to well past the 256-token limit, so truncated), in an
# order where input order and length order differ; plus unicode and whitespace edge cases.
TEXTS = [
    *(lengthened(t, r) for t, r in zip(TOPICS, (1, 30, 2, 12, 1, 25, 4), strict=True)),
    *(lengthened(t, r) for t, r in zip(TOPICS, (9, 1, 20, 1, 6, 2, 40), strict=True)),
    "Ünïcödé café — naïve façade, 北京 and Zürich.",
    "   leading and trailing spaces   ",
    "x",
    "",
]
PARTNER = {i: (i + len(TOPICS)) % (2 * len(TOPICS)) for i in range(2 * len(TOPICS))}


@pytest.fixture(scope="session")
def export_dir(onnx_export: Path) -> Path:
    """The session's fp32 + int8 export of the packaged model (`tests/conftest.py`)."""
    return onnx_export


@pytest.fixture(scope="session")
def reference() -> np.ndarray:
    return SentenceTransformerEmbedder(EmbeddingSettings()).encode(TEXTS)


@pytest.fixture(scope="session")
def fp32(export_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(export_dir, precision="fp32")


@pytest.fixture(scope="session")
def int8(export_dir: Path) -> OnnxEmbedder:
    return OnnxEmbedder(export_dir, precision="int8")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))


@pytest.mark.slow
def test_export_directory_layout(export_dir: Path) -> None:
    manifest = json.loads((export_dir / MANIFEST_FILE).read_text())
    assert manifest["kind"] == "bi-encoder"
    assert manifest["dim"] == 384
    assert manifest["max_seq_length"] == 256
    assert set(manifest["inputs"]) == {"input_ids", "attention_mask", "token_type_ids"}
    for name in (*MODEL_FILES.values(), "tokenizer.json", "1_Pooling/config.json"):
        assert (export_dir / name).is_file(), name
    assert pooling_mode(export_dir) == "mean"
    # int8 weights: about a quarter of the fp32 file.
    fp32_bytes = (export_dir / MODEL_FILES["fp32"]).stat().st_size
    assert (export_dir / MODEL_FILES["int8"]).stat().st_size < fp32_bytes / 3


@pytest.mark.slow
def test_fp32_matches_sentence_transformers(fp32: OnnxEmbedder, reference: np.ndarray) -> None:
    vectors = fp32.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, reference).min() >= 0.999


@pytest.mark.slow
def test_int8_stays_close_to_sentence_transformers(
    int8: OnnxEmbedder, reference: np.ndarray
) -> None:
    vectors = int8.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    agreement = cosines(vectors, reference)
    # Measured: mean 0.994, min 0.975 on SciFact abstracts (per-channel weight scales).
    assert agreement.mean() >= 0.98
    assert agreement.min() >= 0.95
    # Close enough to rank like the original: each topic's nearest text is its other version.
    topics = vectors[: 2 * len(TOPICS)]
    similarity = topics @ topics.T - 2 * np.eye(len(topics))
    assert [int(j) for j in similarity.argmax(axis=1)] == [PARTNER[i] for i in range(len(topics))]


@pytest.mark.slow
def test_an_int8_vector_does_not_depend_on_the_texts_beside_it(export_dir: Path) -> None:
    """Dynamic quantisation scales activations by the whole run's input: batched, a text's
    int8 vector moved with its batchmates. Whatever the batch size asked for, it must not."""
    alone = np.stack([OnnxEmbedder(export_dir, precision="int8").encode([t])[0] for t in TEXTS])
    for batch_size in (3, 64):
        embedder = OnnxEmbedder(export_dir, precision="int8", batch_size=batch_size)
        np.testing.assert_array_equal(embedder.encode(TEXTS), alone)
        np.testing.assert_array_equal(embedder.encode(TEXTS[::-1]), alone[::-1])


@pytest.mark.slow
def test_order_is_restored_after_length_sorting(export_dir: Path, fp32: OnnxEmbedder) -> None:
    small_batches = OnnxEmbedder(export_dir, precision="fp32", batch_size=3)
    batched = small_batches.encode(TEXTS)
    one_by_one = np.stack([fp32.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(batched, one_by_one, atol=2e-5)
    reordered = small_batches.encode(TEXTS[::-1])
    np.testing.assert_allclose(reordered, batched[::-1], atol=2e-5)


def test_length_sorted_batches_cover_every_index_longest_first() -> None:
    lengths = [5, 1, 9, 9, 3, 7, 2]
    batches = length_sorted_batches(lengths, 3)
    flat = [int(i) for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    assert flat[:2] == [2, 3]  # equal lengths keep input order
    assert [len(b) for b in batches] == [3, 3, 1]


@pytest.mark.slow
def test_truncates_to_the_configured_length(export_dir: Path) -> None:
    settings = EmbeddingSettings(max_seq_length=16)
    short = OnnxEmbedder(export_dir, max_seq_length=settings.max_seq_length)
    reference = SentenceTransformerEmbedder(settings).encode(TEXTS)
    assert cosines(short.encode(TEXTS), reference).min() >= 0.999
    # A long text is cut: adding words past the limit changes nothing.
    long = lengthened(TOPICS[0], 40)
    np.testing.assert_allclose(short.encode([long]), short.encode([long + " more words"]))


@pytest.mark.slow
def test_empty_input(fp32: OnnxEmbedder) -> None:
    empty = fp32.encode([])
    assert empty.shape == (0, 384)
    assert empty.dtype == np.float32


@pytest.mark.slow
def test_load_embedder_picks_the_backend(export_dir: Path, reference: np.ndarray) -> None:
    settings = EmbeddingSettings(backend="onnx", onnx_path=export_dir, onnx_precision="int8")
    embedder = load_embedder(settings)
    assert isinstance(embedder, OnnxEmbedder)
    assert embedder.name.startswith("onnx-int8:")
    assert embedder.dim == 384
    assert cosines(embedder.encode(TEXTS), reference).mean() >= 0.98


@pytest.mark.slow
def test_missing_export_or_precision_says_how_to_make_it(
    export_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(OnnxModelMissing, match="ragstream export-onnx"):
        OnnxEmbedder(tmp_path / "nothing-here")
    fp32_only = tmp_path / "fp32-only"
    shutil.copytree(export_dir, fp32_only)
    (fp32_only / MODEL_FILES["int8"]).unlink()
    with pytest.raises(OnnxModelMissing, match="--int8"):
        OnnxEmbedder(fp32_only, precision="int8")


def test_default_export_dir_is_per_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_export_dir(None) == tmp_path / "ragstream" / "onnx" / "all-MiniLM-L6-v2"
    a, b = tmp_path / "a" / "model", tmp_path / "b" / "model"
    assert default_export_dir(str(a)) != default_export_dir(str(b))
    assert default_export_dir(str(a)).name.startswith("bi-encoder-model-")
    assert default_export_dir(str(a), "cross-encoder").name.startswith("cross-encoder-model-")


def test_cli_registers_export_onnx() -> None:
    args = build_parser().parse_args(["export-onnx", "--int8", "--out", "somewhere"])
    assert args.func is cmd_export_onnx
    assert (args.int8, args.out, args.model, args.cross_encoder) == (True, "somewhere", None, False)


@pytest.mark.slow
def test_onnx_serving_imports_no_torch(export_dir: Path) -> None:
    code = (
        "import sys\n"
        "from shared.embedding import load_embedder\n"
        "from shared.settings import EmbeddingSettings\n"
        f"e = load_embedder(EmbeddingSettings(backend='onnx', onnx_path={str(export_dir)!r}))\n"
        "assert e.encode(['a sentence']).shape == (1, 384)\n"
        "heavy = {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, f'imported {heavy}'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_eval_index_cache_key_separates_backends() -> None:
    from ragstream.evaluation.beir import CorpusDoc, Dataset
    from ragstream.evaluation.indexing import cache_key
    from services.chunker.settings import ChunkerSettings

    corpus = {"d1": CorpusDoc("d1", "Title", "Some text.")}
    dataset = Dataset("tiny", "test", corpus, {"q1": "text?"}, {"q1": {"d1": 1}})
    chunker = ChunkerSettings()
    keys = {
        cache_key(dataset, chunker, EmbeddingSettings(backend="torch")),
        cache_key(dataset, chunker, EmbeddingSettings(backend="onnx", onnx_precision="fp32")),
        cache_key(dataset, chunker, EmbeddingSettings(backend="onnx", onnx_precision="int8")),
        cache_key(
            dataset, chunker, EmbeddingSettings(backend="onnx", onnx_path=Path("/elsewhere"))
        ),
    }
    assert len(keys) == 4
    # The torch key is what it was before backends existed (the ONNX fields do not enter it):
    # its cached indexes stay valid.
    assert cache_key(dataset, chunker, EmbeddingSettings(backend="torch")) == cache_key(
        dataset, chunker, EmbeddingSettings(backend="torch", onnx_precision="fp32")
    )
    assert cache_key(dataset, chunker, EmbeddingSettings()) in keys  # the default: int8
