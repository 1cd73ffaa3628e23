"""A stage's HTTP port for Kubernetes and Prometheus: `/livez`, `/readyz`, `/metrics`.

It runs on the stage's own event loop, so `/livez` answering proves the loop is not stuck.
`/readyz` asks the stage (Redis reachable, groups present, not draining) and says why not in
its 503 body. The stage's FastStream app owns SIGTERM: this server installs no signal handlers
and stops when the stage has finished draining.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

ReadinessCheck = Callable[[], Awaitable[list[str]]]
"""Returns why the stage is not ready (empty: ready)."""


class _SignalFreeServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def ops_app(readiness: ReadinessCheck) -> Starlette:
    async def livez(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(request: Request) -> Response:
        problems = await readiness()
        status = 503 if problems else 200
        return JSONResponse({"ready": not problems, "problems": problems}, status_code=status)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[Route("/livez", livez), Route("/readyz", readyz), Route("/metrics", metrics)]
    )


class OpsServer:
    """Serves `ops_app` on (host, port) as a task of the running event loop."""

    def __init__(self, host: str, port: int, readiness: ReadinessCheck) -> None:
        config = uvicorn.Config(
            ops_app(readiness), host=host, port=port, log_config=None, access_log=False,
            lifespan="off",
        )  # fmt: skip
        self._server = _SignalFreeServer(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start serving; returns once the port is bound (a bind failure raises)."""
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raises why it could not start
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
