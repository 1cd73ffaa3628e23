"""Open endpoints for orchestrators and Prometheus: `/livez`, `/readyz`, `/metrics`."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.gateway.models import Liveness, Readiness
from services.gateway.runtime import GatewayDep

router = APIRouter(tags=["probes"])


@router.get("/livez", response_model=Liveness)
async def livez() -> Liveness:
    """The process answers HTTP."""
    return Liveness(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready, and why."}},
)
async def readyz(gateway: GatewayDep) -> JSONResponse:
    """Redis answers PING, the reply reader runs, and the gateway is not draining."""
    problems = await gateway.problems()
    body = Readiness(ready=not problems, problems=problems)
    return JSONResponse(body.model_dump(), status_code=503 if problems else 200)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
