"""Gateway wiring: the FastAPI app, its routes, error handlers and middleware.

Run: `uvicorn services.gateway.app:app --host 0.0.0.0 --port 8080`, or `python -m
services.gateway` (host and port from `RAG_GATEWAY_*`, and draining on SIGTERM).
"""

from fastapi import FastAPI

from services.gateway import api, errors, probes
from services.gateway.limits import BodyLimitMiddleware
from services.gateway.observability import ObservabilityMiddleware
from services.gateway.runtime import Gateway
from services.gateway.settings import GatewaySettings
from shared.logging import configure_logging
from shared.settings import RedisSettings, StreamSettings
from shared.tracing import configure_tracing

DESCRIPTION = """HTTP access to ragstream for clients that cannot speak Redis: queries are
published on the queries stream and answered from the gateway's own reply stream; doc changes
are published on the docs stream. Errors are always an `ErrorResponse`."""


def create_app(
    settings: GatewaySettings | None = None,
    redis_settings: RedisSettings | None = None,
    streams: StreamSettings | None = None,
) -> FastAPI:
    settings = settings or GatewaySettings()
    configure_logging(settings.log_level)
    configure_tracing("ragstream-gateway")
    gateway = Gateway(settings, redis_settings or RedisSettings(), streams or StreamSettings())
    app = FastAPI(
        title="ragstream gateway", version="1", description=DESCRIPTION, lifespan=gateway.lifespan
    )
    app.state.gateway = gateway
    errors.install(app)
    app.include_router(api.v1_router(settings))
    app.include_router(probes.router)
    app.add_middleware(
        BodyLimitMiddleware,
        default=settings.max_query_bytes,
        by_prefix={"/v1/documents": settings.max_document_bytes},
    )
    app.add_middleware(ObservabilityMiddleware)
    return app


settings = GatewaySettings()
app = create_app(settings)
