"""`python -m services.gateway`: uvicorn with draining. On SIGTERM the gateway keeps serving but
`/readyz` says 503 for `drain_s` (load balancers take it out of rotation), then uvicorn shuts
down gracefully (in-flight requests get `grace_s`). SIGINT (Ctrl-C) skips the drain."""

import contextlib
import signal
import time
from types import FrameType

import uvicorn

from services.gateway.runtime import Gateway, log


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway, drain_s: float) -> None:
        super().__init__(config)
        self.gateway = gateway
        self.drain_s = drain_s
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and self._drain_until is None:
            self.gateway.draining = True
            self._drain_until = time.monotonic() + self.drain_s
            log.info("draining", seconds=self.drain_s)
            return
        super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is not None and time.monotonic() >= self._drain_until:
            return True
        return await super().on_tick(counter)


def main() -> None:
    from services.gateway.app import app, settings

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.grace_s,
    )
    with contextlib.suppress(KeyboardInterrupt):
        DrainingServer(config, app.state.gateway, settings.drain_s).run()
