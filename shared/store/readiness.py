"""The index as a readiness condition: a stage that cannot read it should get no traffic."""

import asyncio
from collections.abc import Awaitable, Callable

from shared.store.base import Store

PROBE_DOC_ID = "ragstream:readiness-probe"


def index_answers(store: Store, timeout_s: float = 2.0) -> Callable[[], Awaitable[list[str]]]:
    """A readiness check: one fenced read of the index within `timeout_s`."""

    async def check() -> list[str]:
        try:
            async with asyncio.timeout(timeout_s):
                await store.current_version(PROBE_DOC_ID)
        except Exception as exc:  # any failure means: not ready, and why
            return [f"index: {type(exc).__name__}: {exc}"[:300]]
        return []

    return check
