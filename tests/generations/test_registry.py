"""The generation registry: its transitions (pure) and its compare-and-set on a real Redis."""

from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis

from shared import generations
from shared.generations import GenerationError, Registry
from shared.settings import EmbeddingSettings, StreamSettings

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def stored(registry: Registry) -> Registry:
    """As `generations.replace` stores it: at the next epoch."""
    return registry.model_copy(update={"epoch": registry.epoch + 1})


def test_a_generation_goes_building_ready_serving_retired_dropped() -> None:
    registry = generations.initial("chunks")
    assert [g.table for g in registry.written()] == ["chunks"]

    building = generations.start_building(registry, model="/models/tuned", backend="torch")
    assert building.building is not None and not building.building.ready
    table = building.building.table
    assert table == "chunks__g1"
    assert [g.table for g in building.written()] == ["chunks", table]  # writers fill it
    with pytest.raises(GenerationError, match="not caught up"):
        generations.switch(building, NOW)

    ready = generations.mark_ready(building, table)
    switched = generations.switch(ready, NOW)
    assert switched.serving.table == table and switched.serving.model == "/models/tuned"
    assert switched.building is None
    assert [(g.table, g.retired_at) for g in switched.retired] == [("chunks", NOW)]
    assert [g.table for g in switched.written()] == [table, "chunks"]  # still written in grace

    grace = timedelta(minutes=5)
    assert generations.expired(switched, NOW + timedelta(minutes=4), grace) == []
    [old] = generations.expired(switched, NOW + timedelta(minutes=5), grace)
    assert generations.forget(switched, {old.table}).written() == [switched.serving]
    # the next generation is named after the base table, not the current one
    with pytest.raises(GenerationError, match="exists"):  # the same epoch would reuse g1
        generations.start_building(switched, model=None, backend=None)
    again = generations.start_building(stored(stored(switched)), model=None, backend=None)
    assert again.building is not None and again.building.table == "chunks__g3"


def test_one_build_at_a_time_and_cancel() -> None:
    building = generations.start_building(generations.initial("chunks"), model=None, backend=None)
    with pytest.raises(GenerationError, match="already being built"):
        generations.start_building(building, model=None, backend=None)
    cancelled = generations.cancel_building(building, NOW)
    assert cancelled.building is None and [g.table for g in cancelled.retired] == ["chunks__g1"]
    assert generations.expired(cancelled, NOW, timedelta(0))[0].table == "chunks__g1"
    with pytest.raises(GenerationError):
        generations.mark_ready(cancelled, "chunks__g1")


def test_a_generation_names_its_model_over_the_configured_one() -> None:
    base = EmbeddingSettings(model=None, backend="onnx", onnx_path="/exports/minilm")
    tuned = generations.Generation(table="t", model="/models/tuned", backend="torch")
    settings = tuned.embedding(base)
    assert settings.model == "/models/tuned" and settings.backend == "torch"
    assert settings.onnx_path is None  # the configured export is of another model
    assert generations.Generation(table="t").embedding(base) == base


async def test_changes_are_compare_and_set(redis: Redis, streams: StreamSettings) -> None:
    first = await generations.read(redis, streams.indexed, "chunks")
    assert first == generations.initial("chunks")
    building = generations.start_building(first, model=None, backend=None)
    await generations.replace(redis, streams.indexed, first, building)
    stored = await generations.read(redis, streams.indexed, "chunks")
    assert stored.epoch == 1 and stored.building == building.building
    with pytest.raises(GenerationError, match="changed meanwhile"):  # a second writer, late
        await generations.replace(redis, streams.indexed, first, building)
    cancelled = generations.cancel_building(stored, NOW)
    await generations.replace(redis, streams.indexed, stored, cancelled)
    assert (await generations.read(redis, streams.indexed, "chunks")) == Registry.model_validate(
        {**cancelled.model_dump(), "epoch": 2}
    )
