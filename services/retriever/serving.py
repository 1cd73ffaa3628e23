"""Which index generation a batch of queries searches: the registry's serving one, read once
per batch (`shared.generations`), with the model its vectors come from."""

from collections.abc import Sequence
from functools import partial

from redis.asyncio import Redis

from services.retriever.read_your_writes import retrieve_after
from services.retriever.retrieval import retrieve_batch
from services.retriever.settings import RetrieverSettings
from shared.contracts import Query
from shared.index_pool import IndexPool
from shared.settings import StreamSettings
from shared.stage import Outcome


async def retrieve_from_serving(
    queries: Sequence[Query],
    *,
    pool: IndexPool,
    redis: Redis,
    streams: StreamSettings,
    settings: RetrieverSettings,
) -> Sequence[Outcome]:
    """Read-your-writes waits and the search, both on the generation serving now."""
    index = await pool.serving()
    return await retrieve_after(
        queries,
        retrieve=partial(
            retrieve_batch,
            embedder=index.embedder,
            store=index.store,
            settings=settings,
            streams=streams,
        ),
        store=index.store,
        redis=redis,
        streams=streams,
        settings=settings,
    )
