"""Index generations: which index (table or collection) readers search, and which ones writers
keep up to date.

A new embedding model needs new vectors for every chunk. Re-embedding in place would have
readers rank a mix of two models' vectors, whose scores do not compare; so `ragstream reindex`
builds a new *generation* instead: another table, filled through the embedder stage from the
chunk text the serving generation holds, while live doc events are written to both. Once it has
caught up, `ragstream switch` makes it the serving one with one Redis write; the old one is
retired, still written for a grace period (a retriever that has not re-read the registry yet
keeps serving fresh results from it), then dropped by the embedder.

The registry is one JSON value in Redis beside the freshness stream, changed only by
compare-and-set on its `epoch`. Stages read it once per batch (one GET). No registry means
generation 0: the configured table and model.
"""

from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict
from redis.asyncio import Redis

from shared.settings import EmbeddingBackend, EmbeddingSettings

_REPLACE_IF_EPOCH = """
local current = redis.call('GET', KEYS[1])
local epoch = 0
if current then epoch = tonumber(cjson.decode(current)['epoch']) end
if epoch ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


class GenerationError(RuntimeError):
    """A registry change that does not apply to the registry as it is (the message says why)."""


class Generation(BaseModel):
    """One index: its table and the model its vectors come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: str
    model: str | None = None
    """Model name or path; None: the configured one (`RAG_EMBEDDING_MODEL`)."""
    backend: EmbeddingBackend | None = None
    """None: the configured backend (`RAG_EMBEDDING_BACKEND`)."""
    ready: bool = True
    """False while a reindex is filling it: never served."""
    retired_at: datetime | None = None

    def embedding(self, base: EmbeddingSettings) -> EmbeddingSettings:
        """The embedding settings of this generation: `base` with its model and backend."""
        changes: dict[str, object] = {}
        if self.model is not None:
            changes |= {"model": self.model, "onnx_path": None}
        if self.backend is not None:
            changes["backend"] = self.backend
        return base.model_copy(update=changes)


class Registry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    epoch: int = 0
    serving: Generation
    building: Generation | None = None
    retired: tuple[Generation, ...] = ()

    def written(self) -> list[Generation]:
        """Every generation writers keep up to date, the serving one first."""
        return [self.serving, *([self.building] if self.building else []), *self.retired]

    def find(self, table: str) -> Generation | None:
        return next((g for g in self.written() if g.table == table), None)


def key(indexed_stream: str) -> str:
    return f"{indexed_stream}:generations"


def initial(table: str) -> Registry:
    """Generation 0: the configured table and model."""
    return Registry(serving=Generation(table=table))


async def read(redis: Redis, indexed_stream: str, table: str) -> Registry:
    raw = await redis.get(key(indexed_stream))
    return initial(table) if raw is None else Registry.model_validate_json(raw)


async def replace(redis: Redis, indexed_stream: str, old: Registry, new: Registry) -> None:
    """Store `new` if the registry is still at `old`'s epoch; `new` gets the next epoch."""
    value = new.model_copy(update={"epoch": old.epoch + 1}).model_dump_json()
    done = await redis.eval(_REPLACE_IF_EPOCH, 1, key(indexed_stream), old.epoch, value)
    if not done:
        raise GenerationError("the registry changed meanwhile (another reindex or switch?)")


def start_building(
    registry: Registry, *, model: str | None, backend: EmbeddingBackend | None
) -> Registry:
    """A new, empty generation that writers fill from now on; not served until `switch`."""
    if registry.building is not None:
        raise GenerationError(f"generation {registry.building.table!r} is already being built")
    base = registry.serving.table.split("__g", 1)[0]
    table = f"{base}__g{registry.epoch + 1}"  # epochs only grow: a name is never reused
    if registry.find(table) is not None:
        raise GenerationError(f"{table!r} exists: store the registry (`replace`) between changes")
    building = Generation(table=table, model=model, backend=backend, ready=False)
    return registry.model_copy(update={"building": building})


def mark_ready(registry: Registry, table: str) -> Registry:
    if registry.building is None or registry.building.table != table:
        raise GenerationError(f"{table!r} is not the generation being built")
    return registry.model_copy(update={"building": registry.building.model_copy(
        update={"ready": True}
    )})  # fmt: skip


def cancel_building(registry: Registry, now: datetime) -> Registry:
    """Stop building: the partial generation is retired at once (and dropped by the writer)."""
    if registry.building is None:
        raise GenerationError("no generation is being built")
    gone = registry.building.model_copy(update={"retired_at": now})
    return registry.model_copy(update={"building": None, "retired": (*registry.retired, gone)})


def switch(registry: Registry, now: datetime) -> Registry:
    """Serve the built generation; retire the serving one."""
    building = registry.building
    if building is None or not building.ready:
        state = "not caught up yet" if building else "none is being built"
        raise GenerationError(f"no generation to switch to ({state}): run `ragstream reindex`")
    retired = registry.serving.model_copy(update={"retired_at": now})
    return registry.model_copy(
        update={"serving": building, "building": None, "retired": (*registry.retired, retired)}
    )


def expired(registry: Registry, now: datetime, grace: timedelta) -> list[Generation]:
    """Retired generations past their grace period: to drop."""
    return [g for g in registry.retired if g.retired_at and now - g.retired_at >= grace]


def forget(registry: Registry, tables: set[str]) -> Registry:
    """The registry without the retired generations `tables` (dropped)."""
    kept = tuple(g for g in registry.retired if g.table not in tables)
    return registry.model_copy(update={"retired": kept})
