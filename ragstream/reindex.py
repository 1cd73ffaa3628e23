"""`ragstream reindex --model PATH` and `ragstream switch`: a model change without downtime.

`reindex` registers a new index generation (`shared.generations`): from then on the embedders
write every live doc event to it as well. It then publishes a `DocReindex` per doc the index
knows (the doc-state hash beside `rag.indexed`) on the chunks stream, so the embedder stage copies
each doc's served chunks into the new generation, embedded by the new model, and scales as the
stage does. Once the embedders have taken every one of them, it compares the new generation's
fences with the doc states and sends the docs that are behind again (a batch that was already
running when the generation was registered wrote to the old one only), until none is: then the
generation is *ready*. `switch` (or `reindex --switch`) makes it the serving one.
"""

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence

from redis.asyncio import Redis

from shared import doc_state, generations, wire
from shared.contracts import DocReindex
from shared.contracts.base import utcnow
from shared.embedding import load_embedder
from shared.generations import GenerationError, Registry
from shared.settings import EmbeddingBackend, EmbeddingSettings, StoreSettings, StreamSettings
from shared.store.base import Store
from shared.store.factory import open_store

Progress = Callable[[str, dict[str, object]], None]
"""Told each step: an event name and its figures."""
SLICE = 500


async def behind(states: Sequence[doc_state.DocState], store: Store) -> list[doc_state.DocState]:
    """The docs `store` holds an older version of than their recorded state. A deleted doc is
    behind only while the store still serves an older live version of it."""
    lagging: list[doc_state.DocState] = []
    for start in range(0, len(states), SLICE):
        part = states[start : start + SLICE]
        fences = await store.fences([s.doc_id for s in part])
        for state in part:
            fence = fences.get(state.doc_id)
            if state.deleted:
                if fence is not None and not fence.deleted and fence.version < state.version:
                    lagging.append(state)
            elif fence is None or (fence.version, fence.deleted) < (state.version, False):
                lagging.append(state)
    return lagging


async def publish(
    redis: Redis, stream: str, table: str, states: Sequence[doc_state.DocState]
) -> bytes | None:
    """A `DocReindex` per state on `stream`, pipelined; the last entry id."""
    last: bytes | None = None
    for start in range(0, len(states), SLICE):
        async with redis.pipeline(transaction=False) as pipe:
            for state in states[start : start + SLICE]:
                event = DocReindex(doc_id=state.doc_id, version=state.version, table=table)
                pipe.xadd(stream, wire.encode(event))
            ids = await pipe.execute()
        last = ids[-1] if ids else last
    return last


async def taken(redis: Redis, stream: str, group: str, last_id: bytes) -> bool:
    """Whether `group` has read every entry of `stream` up to `last_id` and acked them all."""
    groups = {_text(g["name"]): g for g in await redis.xinfo_groups(stream)}
    mine = groups.get(group)
    if mine is None or _entry(mine["last-delivered-id"]) < _entry(last_id):
        return False
    return not await redis.xpending_range(stream, group, min="-", max=last_id, count=1)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _entry(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = _text(entry_id).partition("-")
    return int(ms), int(seq or 0)


async def wait_taken(
    redis: Redis, stream: str, group: str, last_id: bytes, *, deadline: float, poll_s: float
) -> None:
    while True:
        if await taken(redis, stream, group, last_id):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {group} group has not taken every reindex entry in time")
        await asyncio.sleep(poll_s)


async def reindex(
    redis: Redis,
    *,
    model: str | None,
    backend: EmbeddingBackend | None,
    streams: StreamSettings,
    store_settings: StoreSettings,
    embedding: EmbeddingSettings,
    group: str = "embedder",
    rounds: int = 10,
    timeout_s: float = 3600.0,
    poll_s: float = 0.2,
    on_progress: Progress | None = None,
) -> Registry:
    """Build a new generation with `model` and wait until it has caught up (ready)."""
    tell = on_progress or (lambda _event, _figures: None)
    deadline = time.monotonic() + timeout_s
    registry = await generations.read(redis, streams.indexed, store_settings.table)
    building = generations.start_building(registry, model=model, backend=backend)
    target = building.building
    assert target is not None
    # Load the model first: a path that does not load changes nothing.
    embedder = await asyncio.to_thread(load_embedder, target.embedding(embedding))
    await generations.replace(redis, streams.indexed, registry, building)
    tell("generation registered", {"table": target.table, "model": model or "(configured)"})
    store = open_store(store_settings.model_copy(update={"table": target.table}), embedder.dim)
    try:
        todo = await doc_state.scan(redis, streams.indexed)
        for round_ in range(1, rounds + 1):
            last = await publish(redis, streams.chunks, target.table, todo)
            tell("docs sent", {"round": round_, "docs": len(todo)})
            if last is not None:
                await wait_taken(
                    redis, streams.chunks, group, last, deadline=deadline, poll_s=poll_s
                )
            todo = await behind(await doc_state.scan(redis, streams.indexed), store)
            if not todo:
                break
        else:
            raise GenerationError(f"{len(todo)} docs still behind after {rounds} rounds")
    finally:
        await store.close()
    registry = await generations.read(redis, streams.indexed, store_settings.table)
    ready = generations.mark_ready(registry, target.table)
    await generations.replace(redis, streams.indexed, registry, ready)
    tell("generation ready", {"table": target.table})
    return await generations.read(redis, streams.indexed, store_settings.table)


async def switch(redis: Redis, *, streams: StreamSettings, table: str) -> Registry:
    """Serve the ready generation; the serving one is retired (dropped after the grace)."""
    registry = await generations.read(redis, streams.indexed, table)
    switched = generations.switch(registry, utcnow())
    await generations.replace(redis, streams.indexed, registry, switched)
    return await generations.read(redis, streams.indexed, table)


async def cancel(redis: Redis, *, streams: StreamSettings, table: str) -> Registry:
    """Stop building: the partial generation is retired now and dropped by the embedders."""
    registry = await generations.read(redis, streams.indexed, table)
    cancelled = generations.cancel_building(registry, utcnow())
    await generations.replace(redis, streams.indexed, registry, cancelled)
    return await generations.read(redis, streams.indexed, table)


def add_parsers(
    sub: "argparse._SubParsersAction[argparse.ArgumentParser]",
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """`reindex` and `switch`."""
    build = sub.add_parser(
        "reindex", help="build a new index generation with another embedding model, live"
    )
    build.add_argument(
        "--model", help="model name or path (e.g. from train-embedder); default: the configured"
    )
    build.add_argument(
        "--backend", choices=("torch", "onnx"), help="default: RAG_EMBEDDING_BACKEND"
    )
    build.add_argument("--switch", action="store_true", help="serve it as soon as it is ready")
    build.add_argument(
        "--cancel", action="store_true", help="stop the build in progress (its index is dropped)"
    )
    build.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    flip = sub.add_parser(
        "switch", help="serve the generation `reindex` built; the old one is dropped after a grace"
    )
    return build, flip
