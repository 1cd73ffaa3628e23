"""Every error the gateway sends is an `ErrorResponse`: 4xx for what the client got wrong (with
what and where, never the input itself), 503 when Redis is unreachable, 504 on an answer
timeout, and a bare 500 for bugs (logged here, never described to the client)."""

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from services.gateway.models import ErrorResponse, Problem
from shared.logging import get_logger

log = get_logger("ragstream.gateway.errors")
MAX_PROBLEMS = 10


def error_response(
    status: int,
    message: str,
    *,
    kind: str | None = None,
    problems: Sequence[Problem] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """`kind` defaults to the status phrase in snake case (`not_found`, `gateway_timeout`)."""
    kind = kind or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    body = ErrorResponse(error=kind, message=message, problems=list(problems))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def problems_of(errors: Sequence[Any]) -> list[Problem]:
    """Location and message of each validation error; the offending input is left out."""
    problems = []
    for error in errors[:MAX_PROBLEMS]:
        location = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "json_invalid":
            location = "body"
            message = f"invalid JSON: {error.get('ctx', {}).get('error', 'decode error')}"
        problems.append(Problem(location=location, message=message))
    return problems


async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = problems_of(exc.errors())
    summary = "; ".join(f"{p.location}: {p.message}" for p in problems)
    message = f"invalid request: {summary}"
    return error_response(422, message, kind="validation_error", problems=problems)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    message = str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed here"
    return error_response(exc.status_code, message, headers=exc.headers)


async def on_redis_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unreachable", reason=type(exc).__name__)
    message = "the event store (Redis) is unreachable; retry later"
    return error_response(503, message, headers={"Retry-After": "1"})


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error", exc_info=exc)
    return error_response(500, "internal error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(RedisConnectionError, on_redis_down)
    app.add_exception_handler(RedisTimeoutError, on_redis_down)
    app.add_exception_handler(Exception, on_unexpected)
