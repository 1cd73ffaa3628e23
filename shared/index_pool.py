"""The indexes of the generations a stage works with, each opened (and its model loaded) on first
use, and the registry that says which ones those are (`shared.generations`)."""

import asyncio
from dataclasses import dataclass
from datetime import timedelta

import structlog
from redis.asyncio import Redis

from shared import generations
from shared.contracts.base import utcnow
from shared.embedding import Embedder, load_embedder
from shared.errors import REDIS_DOWN
from shared.generations import Generation, Registry
from shared.recent_vectors import RecentVectors
from shared.settings import EmbeddingSettings, StoreSettings
from shared.store.base import Store
from shared.store.factory import open_store

log = structlog.get_logger("ragstream.generations")


@dataclass(frozen=True, slots=True)
class Index:
    """One generation's store, the model that embeds for it, and the vectors a writer last
    wrote or read of its docs."""

    generation: Generation
    embedder: Embedder
    store: Store
    recent: RecentVectors


class IndexPool:
    """Opens each generation's store and model once. Generation 0 (the configured table and
    model) is the pair the stage loaded at start-up."""

    def __init__(
        self,
        redis: Redis,
        indexed_stream: str,
        store_settings: StoreSettings,
        embedding_settings: EmbeddingSettings,
        *,
        embedder: Embedder,
        store: Store,
        recent_vectors: int = 0,
    ) -> None:
        """`recent_vectors`: how many vectors each index's `RecentVectors` holds (a writer's)."""
        self.redis, self.indexed_stream = redis, indexed_stream
        self.recent_vectors = recent_vectors
        self._recent: dict[str, RecentVectors] = {}
        self.store_settings, self.embedding_settings = store_settings, embedding_settings
        self._embedders: dict[str, Embedder] = {_model_key(embedding_settings): embedder}
        self._stores: dict[str, Store] = {store_settings.table: store}
        self._loading: dict[str, asyncio.Future[Embedder]] = {}
        self._maintenance = asyncio.Lock()
        self._warming: dict[str, asyncio.Task[Index]] = {}
        """Held by prune, optimize and drop: none of them runs on an index being dropped."""

    async def registry(self) -> Registry:
        return await generations.read(self.redis, self.indexed_stream, self.store_settings.table)

    async def index(self, generation: Generation) -> Index:
        """The generation's index; its model is loaded once, in a worker thread, while other
        generations' indexes keep being served."""
        settings = generation.embedding(self.embedding_settings)
        model = _model_key(settings)
        if model not in self._embedders:
            loading = self._loading.get(model)
            if loading is None:
                log.info("loading model", table=generation.table, model=settings.model)
                loading = asyncio.ensure_future(asyncio.to_thread(load_embedder, settings))
                self._loading[model] = loading
            try:
                self._embedders[model] = await asyncio.shield(loading)
            finally:
                if loading.done():
                    self._loading.pop(model, None)
        embedder = self._embedders[model]
        if generation.table not in self._stores:
            table = self.store_settings.model_copy(update={"table": generation.table})
            self._stores[generation.table] = open_store(table, dim=embedder.dim)
        recent = self._recent.setdefault(generation.table, RecentVectors(self.recent_vectors))
        return Index(generation, embedder, self._stores[generation.table], recent)

    async def serving(self) -> Index:
        """The serving generation's index. A generation being built gets its model loaded in
        the background meanwhile, so a reader serves it without a pause after `switch`."""
        registry = await self.registry()
        building = registry.building
        if building is not None and building.table not in self._warming:
            warming = asyncio.create_task(self.index(building))
            warming.add_done_callback(_log_failure)
            self._warming[building.table] = warming
        return await self.index(registry.serving)

    async def written(self) -> list[Index]:
        """The indexes writers keep up to date, the serving one first."""
        return [await self.index(g) for g in (await self.registry()).written()]

    async def drop_expired(self, grace: timedelta, *, settle_s: float = 5.0) -> None:
        """Forget the retired generations past `grace` in the registry, then, `settle_s` later
        (batches that read the registry before may still be writing to them), drop their
        indexes. The writer's timer; with several writers, the first to forget them drops."""
        try:
            registry = await self.registry()
        except REDIS_DOWN:
            return  # Redis restarting: the next check drops them
        gone = generations.expired(registry, utcnow(), grace)
        if not gone:
            return
        try:
            await generations.replace(
                self.redis,
                self.indexed_stream,
                registry,
                generations.forget(registry, {g.table for g in gone}),
            )
        except generations.GenerationError:
            return  # another writer forgot them first: it drops them
        await asyncio.sleep(settle_s)
        async with self._maintenance:
            for generation in gone:
                index = await self.index(generation)
                self._stores.pop(generation.table, None)
                self._recent.pop(generation.table, None)
                await index.store.drop()
                await index.store.close()
                log.info("dropped generation", table=generation.table)

    async def prune(self) -> None:
        """`Store.prune` on every open index (the writer's timer)."""
        async with self._maintenance:
            for store in list(self._stores.values()):
                await store.prune()

    async def optimize(self, *, min_new_versions: int = 0) -> None:
        """`Store.optimize` on every open index (the writer's timer)."""
        async with self._maintenance:
            for store in list(self._stores.values()):
                await store.optimize(min_new_versions=min_new_versions)

    async def close(self) -> None:
        for store in self._stores.values():
            await store.close()


def _log_failure(task: "asyncio.Task[Index]") -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("loading a generation's model failed", error=str(exc))


def _model_key(settings: EmbeddingSettings) -> str:
    return settings.model_dump_json(include={"model", "backend", "onnx_path", "onnx_precision"})
