"""A stage's /livez, /readyz and /metrics, in-process against a real Redis; the counts the
runtime exports for the entries it handles, and the group's sampled lag and pending count."""

from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel, TypeAdapter
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer, free_port
from shared import wire
from shared.errors import PermanentError
from shared.settings import RedisSettings, StreamSettings
from shared.stage import Entry, Outcome, Publication, Stage
from shared.stage_settings import StageSettings


class Item(BaseModel):
    name: str


ITEM = TypeAdapter(Item)


async def echo(items: Sequence[Item]) -> list[Outcome]:
    return [
        PermanentError("bad item") if i.name == "bad" else [Publication("ops.out", i)]
        for i in items
    ]


@pytest.fixture
async def stage(redis_server: RedisServer, streams: StreamSettings) -> AsyncIterator[Stage]:
    settings = StageSettings(consumer="c1", http_host="127.0.0.1", http_port=free_port())
    redis_settings = RedisSettings.model_validate({"RAG_REDIS_URL": redis_server.url})
    stage = Stage(f"ops-{streams.docs}", settings, redis_settings, streams)
    stage.subscribe(streams.docs, ITEM, echo)
    yield stage
    await stage.stop()


@pytest.fixture
async def http(stage: Stage) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{stage.settings.http_port}") as c:
        yield c


def sample(name: str, stage: Stage, stream: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, {"stage": stage.name, "stream": stream, **labels})
    return value or 0.0


async def test_probes_follow_the_stage_lifecycle(stage: Stage, http: httpx.AsyncClient) -> None:
    await stage.start_ops_server()
    assert (await http.get("/livez")).status_code == 200
    starting = await http.get("/readyz")
    assert starting.status_code == 503
    assert starting.json()["problems"] == ["starting"]

    await stage.start()
    await stage.start_background()
    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text

    await stage.begin_stop()
    draining = await http.get("/readyz")
    assert draining.status_code == 503
    assert draining.json()["problems"] == ["draining after SIGTERM"]
    assert (await http.get("/livez")).status_code == 200

    await stage.stop()
    with pytest.raises(httpx.ConnectError):
        await http.get("/livez")


async def test_not_ready_when_its_group_is_gone(
    stage: Stage, http: httpx.AsyncClient, redis: Redis, streams: StreamSettings
) -> None:
    await stage.start_ops_server()
    await stage.start()
    await stage.start_background()
    await redis.xgroup_destroy(streams.docs, stage.group)
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert "consumer group" in response.json()["problems"][0]


async def test_not_ready_while_a_registered_check_fails(
    stage: Stage, http: httpx.AsyncClient
) -> None:
    async def index_down() -> list[str]:
        return ["index: unreachable"]

    stage.check_ready(index_down)
    await stage.start_ops_server()
    await stage.start()
    await stage.start_background()
    response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["problems"] == ["index: unreachable"]


async def test_entries_are_counted_and_exported(
    stage: Stage, http: httpx.AsyncClient, redis: Redis, streams: StreamSettings
) -> None:
    await stage.start_ops_server()
    await stage.start()
    for name in ("a", "bad", "b"):
        await redis.xadd(streams.docs, wire.encode(Item(name=name)))
    await redis.xadd(streams.docs, {b"nonsense": b"1"})
    response = await redis.xreadgroup(stage.group, "c1", {streams.docs: ">"}, count=2)
    await stage.subscriptions[0].process([Entry(i, f) for _, es in response for i, f in es])

    stream = streams.docs
    assert sample("ragstream_entries_consumed_total", stage, stream) == 2
    assert sample("ragstream_entries_acked_total", stage, stream) == 2
    assert sample("ragstream_entries_dead_lettered_total", stage, stream) == 1
    assert sample("ragstream_handle_seconds_count", stage, stream) == 1
    assert sample("ragstream_batch_size_sum", stage, stream) == 2

    await stage._sample_groups()  # what the runtime does every metrics_interval_s
    group = {"group": stage.group}
    assert sample("ragstream_group_lag", stage, stream, **group) == 2  # "b" and the nonsense
    assert sample("ragstream_group_pending", stage, stream, **group) == 0

    exported = (await http.get("/metrics")).text
    labels = f'stage="{stage.name}",stream="{stream}"'
    assert f"ragstream_entries_dead_lettered_total{{{labels}}} 1.0" in exported
    assert "ragstream_group_lag{" in exported
