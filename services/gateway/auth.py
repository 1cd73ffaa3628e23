"""API keys on /v1/*: `Authorization: Bearer <key>` or `X-API-Key: <key>`. Probes and metrics
stay open. Without configured keys the dependency is not installed at all (and the OpenAPI
document declares no security)."""

import hmac
from typing import Annotated

from fastapi import HTTPException, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.gateway.runtime import GatewayDep

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <API key>`")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="`X-API-Key: <API key>`")
UNAUTHORIZED = "missing or invalid API key: send `Authorization: Bearer <key>` or `X-API-Key`"


def key_accepted(accepted: tuple[bytes, ...], presented: str) -> bool:
    """Constant-time comparison against every key (no early exit reveals which one)."""
    candidate = presented.encode("latin-1")  # header values arrive latin-1 decoded
    matches = [hmac.compare_digest(candidate, key) for key in accepted]
    return any(matches)


async def require_api_key(
    gateway: GatewayDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    api_key: Annotated[str | None, Security(_api_key)],
) -> None:
    accepted = gateway.settings.accepted_keys()
    presented = [p for p in (bearer.credentials if bearer else None, api_key) if p]
    if not any(key_accepted(accepted, p) for p in presented):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"}
        )
