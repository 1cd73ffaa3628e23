"""The /v1 endpoints: queries and doc changes in, answers and per-doc index state out."""

from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi import Query as QueryParam
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse
from starlette.convertors import PathConvertor, register_url_convertor

from services.gateway.auth import require_api_key
from services.gateway.documents import delete_event, publish_change, upsert_event
from services.gateway.models import Accepted, DocumentRequest, ErrorResponse, QueryRequest
from services.gateway.querying import ask, ask_streaming, new_query, timeout_message
from services.gateway.runtime import GatewayDep
from services.gateway.settings import GatewaySettings
from shared import doc_state
from shared.contracts import Answer
from shared.doc_state import DocState
from shared.logging import get_logger


class AnyText(PathConvertor):
    """A path tail of any characters, newlines and `/` included: doc ids are arbitrary text."""

    regex = "(?s:.*)"


register_url_convertor("any", AnyText())
DocIdPath = Annotated[
    str, Path(min_length=1, max_length=512, description="The document's id (may contain `/`).")
]
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
log = get_logger("ragstream.gateway.api")


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


async def query(body: QueryRequest, gateway: GatewayDep) -> Answer | Response:
    """Ask a question; the Answer cites the chunks it used. A failed pipeline step shows in the
    Answer's `error` (still 200): only the gateway's own failures are HTTP errors."""
    timeout_s = gateway.timeout_for(body.timeout_s)
    event = new_query(body, gateway.replies.stream, timeout_s)
    structlog.contextvars.bind_contextvars(query_id=event.query_id)
    router, streams = gateway.replies, gateway.streams
    try:
        if not body.stream:
            return await ask(event, router, streams, timeout_s)
        events = await ask_streaming(event, router, streams, timeout_s, gateway.settings.sse_ping_s)
    except TimeoutError:
        log.warning("query timed out", timeout_s=timeout_s)
        raise HTTPException(504, timeout_message(event, timeout_s)) from None
    return EventSourceResponse(events, headers=SSE_HEADERS)


async def upsert_document(body: DocumentRequest, gateway: GatewayDep) -> Accepted:
    """Create or replace a document. 202: published; it is searchable once
    `GET /v1/documents/{doc_id}` shows this version."""
    event = upsert_event(body, gateway.clock)
    structlog.contextvars.bind_contextvars(doc_id=event.doc_id, version=event.version)
    await publish_change(gateway.redis, gateway.streams, event)
    return Accepted(event_id=event.event_id, doc_id=event.doc_id, version=event.version)


async def delete_document(
    doc_id: DocIdPath,
    gateway: GatewayDep,
    version: Annotated[
        int | None,
        QueryParam(ge=0, description="Version of the delete; default: the gateway's clock."),
    ] = None,
) -> Accepted:
    """Remove a document: versions older than the delete's are dropped, even if they arrive
    later."""
    event = delete_event(doc_id, version, gateway.clock)
    structlog.contextvars.bind_contextvars(doc_id=event.doc_id, version=event.version)
    await publish_change(gateway.redis, gateway.streams, event)
    return Accepted(event_id=event.event_id, doc_id=event.doc_id, version=event.version)


async def document_state(doc_id: DocIdPath, gateway: GatewayDep) -> DocState:
    """The version of the document the index serves (`deleted`: none since that version)."""
    state = await doc_state.read(gateway.redis, gateway.streams.indexed, doc_id)
    if state is None:
        raise HTTPException(404, "the index has never acknowledged a version of this document")
    return state


def v1_router(settings: GatewaySettings) -> APIRouter:
    """Auth is only installed (and documented) when API keys are configured."""
    auth_on = bool(settings.accepted_keys())
    responses: dict[int | str, dict[str, Any]] = {
        422: _error("Invalid request: what and where."),
        503: _error("Redis is unreachable."),
    }
    if auth_on:
        responses[401] = _error("Missing or invalid API key.")
    router = APIRouter(
        prefix="/v1",
        dependencies=[Depends(require_api_key)] if auth_on else [],
        responses=responses,
    )
    too_large = _error("The request body is over the limit.")
    unparsable = _error("The body could not be parsed (e.g. it is not UTF-8).")
    router.add_api_route(
        "/query", query, methods=["POST"], response_model=Answer, tags=["queries"],
        responses={
            200: {
                "description": "The Answer; with `stream`, Server-Sent Events: `delta` events "
                "(AnswerDelta JSON) as text is generated, then one `answer` event (Answer JSON), "
                "or an `error` event if the answer is late once streaming began.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            400: unparsable,
            413: too_large,
            504: _error("No answer within the timeout."),
        },
    )  # fmt: skip
    router.add_api_route(
        "/documents", upsert_document, methods=["POST"], status_code=202,
        response_model=Accepted, tags=["documents"],
        responses={400: unparsable, 413: too_large},
    )  # fmt: skip
    router.add_api_route(
        "/documents/{doc_id:any}", document_state, methods=["GET"], response_model=DocState,
        tags=["documents"], responses={404: _error("The index never acknowledged this document.")},
    )  # fmt: skip
    router.add_api_route(
        "/documents/{doc_id:any}", delete_document, methods=["DELETE"], status_code=202,
        response_model=Accepted, tags=["documents"],
    )  # fmt: skip
    return router
