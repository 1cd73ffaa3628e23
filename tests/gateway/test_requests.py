"""Bad requests get clear 4xx JSON errors (never 5xx, never the input echoed back); good ones
are published as the shared contracts. In-process gateway over real HTTP, real Redis, no stages."""

import json
import time
from collections.abc import AsyncIterator
from urllib.parse import quote

import httpx
import pytest
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from shared.contracts import DocDelete, DocUpsert
from shared.contracts.docs import DOC_EVENT
from shared.settings import StreamSettings
from tests.gateway.conftest import API_KEY, AUTH, make_app, serving

QUERY_LIMIT = 8_000
DOC_LIMIT = 20_000


@pytest.fixture
async def http(
    redis_server: RedisServer, streams: StreamSettings
) -> AsyncIterator[httpx.AsyncClient]:
    app = make_app(
        redis_server.url, streams, api_keys=f"other-key, {API_KEY}",
        max_query_bytes=QUERY_LIMIT, max_document_bytes=DOC_LIMIT,
    )  # fmt: skip
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        yield client


async def published(redis: Redis, streams: StreamSettings) -> list[DocUpsert | DocDelete]:
    return [DOC_EVENT.validate_json(f[b"event"]) for _, f in await redis.xrange(streams.docs)]


def assert_error(response: httpx.Response, status: int, *fragments: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message", "problems"}
    for fragment in fragments:
        assert fragment in body["message"], body
    return body


async def test_upsert_and_delete_publish_the_contracts(
    http: httpx.AsyncClient, redis: Redis, streams: StreamSettings
) -> None:
    doc = {"doc_id": "handbook/leave", "title": "Leave", "text": "Staff get 30 days.",
           "metadata": {"team": "hr"}, "version": 42}  # fmt: skip
    upserted = await http.post("/v1/documents", json=doc, headers=AUTH)
    deleted = await http.delete("/v1/documents/handbook/leave", headers=AUTH)
    assert upserted.status_code == deleted.status_code == 202, (upserted.text, deleted.text)

    events = await published(redis, streams)
    assert [type(e) for e in events] == [DocUpsert, DocDelete]
    upsert, delete = events
    assert (upsert.doc_id, upsert.version, upsert.title, upsert.text) == (
        "handbook/leave", 42, "Leave", "Staff get 30 days.")  # fmt: skip
    assert upsert.metadata == {"team": "hr"} and upsert.source == "gateway"
    assert upserted.json() == {"event_id": str(upsert.event_id), "doc_id": "handbook/leave",
                               "version": 42}  # fmt: skip
    assert delete.doc_id == "handbook/leave" and deleted.json()["version"] == delete.version
    assert deleted.json()["event_id"] == str(delete.event_id)


async def test_doc_ids_may_hold_any_character(
    http: httpx.AsyncClient, redis: Redis, streams: StreamSettings
) -> None:
    doc_id = "notes/2024 Q1?#\nsummary %"
    posted = await http.post("/v1/documents", json={"doc_id": doc_id, "text": "x"}, headers=AUTH)
    deleted = await http.delete(f"/v1/documents/{quote(doc_id, safe='')}", headers=AUTH)
    unknown = await http.get(f"/v1/documents/{quote(doc_id, safe='/')}", headers=AUTH)
    assert posted.status_code == deleted.status_code == 202 and unknown.status_code == 404
    assert [e.doc_id for e in await published(redis, streams)] == [doc_id, doc_id]


async def test_default_versions_follow_the_clock_and_never_repeat(
    http: httpx.AsyncClient, redis: Redis, streams: StreamSettings
) -> None:
    doc = {"doc_id": "clock", "text": "tick"}
    versions = [(await http.post("/v1/documents", json=doc, headers=AUTH)).json()["version"]
                for _ in range(5)]  # fmt: skip
    versions.append((await http.delete("/v1/documents/clock", headers=AUTH)).json()["version"])
    assert versions == sorted(set(versions))
    assert abs(versions[0] - time.time() * 1000) < 60_000
    explicit = await http.delete("/v1/documents/clock?version=7", headers=AUTH)
    assert explicit.json()["version"] == 7
    assert [e.version for e in await published(redis, streams)] == [*versions, 7]


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"doc_id": "d", "text": "   "}, ["body.text: document text is empty"]),
        ({"doc_id": "d"}, ["body.text: Field required"]),
        ({"text": "x"}, ["body.doc_id: Field required"]),
        ({"doc_id": "", "text": "x"}, ["body.doc_id: String should have at least 1 character"]),
        ({"doc_id": "d" * 513, "text": "x"}, ["body.doc_id: String should have at most 512"]),
        ({"doc_id": "d", "text": "x", "version": -1}, ["body.version: Input should be greater"]),
        ({"doc_id": "d", "text": "x", "version": "7"}, ["body.version: Input should be a valid"]),
        ({"doc_id": "d", "text": "x", "colour": "red"}, ["body.colour: Extra inputs"]),
        ({"doc_id": 5, "text": "x"}, ["body.doc_id: Input should be a valid string"]),
        ([1, 2], ["body: Input should be a valid dictionary"]),
    ],
)
async def test_invalid_documents_are_422_with_what_and_where(
    http: httpx.AsyncClient, redis: Redis, streams: StreamSettings,
    body: object, fragments: list[str],
) -> None:  # fmt: skip
    response = await http.post("/v1/documents", json=body, headers=AUTH)
    error = assert_error(response, 422, *fragments)
    assert error["error"] == "validation_error" and error["problems"]
    assert await redis.xlen(streams.docs) == 0


async def test_malformed_and_non_json_bodies_are_4xx(http: httpx.AsyncClient) -> None:
    headers = {**AUTH, "content-type": "application/json"}
    response = await http.post(
        "/v1/documents", content=b'{"doc_id": "d", "text": ', headers=headers
    )
    assert_error(response, 422, "body: invalid JSON")
    response = await http.post("/v1/query", content=b'{"text": "\xff"}', headers=headers)
    assert_error(response, 400, "error parsing the body")
    response = await http.post("/v1/query", content=b"text=hi", headers={**AUTH,
                               "content-type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert_error(response, 422, "body")
    response = await http.post("/v1/query", headers=AUTH)
    assert_error(response, 422, "body: Field required")


async def test_errors_never_echo_the_input(http: httpx.AsyncClient) -> None:
    secret = "sk-live-0123456789"
    for body in (
        {"doc_id": "d", "text": "x", "api_token": secret},
        {"doc_id": "d", "text": "x", "version": secret},
        {"doc_id": secret * 40, "text": "x"},
    ):
        response = await http.post("/v1/documents", json=body, headers=AUTH)
        assert response.status_code == 422 and secret not in response.text


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"text": ""}, "body.text: String should have at least 1 character"),
        ({"text": " \n "}, "body.text: query text is empty"),
        ({"text": "x" * 4001}, "body.text: String should have at most 4000 characters"),
        ({"text": "q", "top_n": 0}, "body.top_n: Input should be greater than or equal to 1"),
        ({"text": "q", "top_k_retrieve": 201}, "body.top_k_retrieve: Input should be less than"),
        ({"text": "q", "timeout_s": 0}, "body.timeout_s: Input should be greater than 0"),
        ({"text": "q", "filters": {"source": 3}}, "body.filters.source: Input should be a valid"),
        ({"text": "q", "stream": "yes"}, "body.stream: Input should be a valid boolean"),
    ],
)
async def test_invalid_queries_are_422(
    http: httpx.AsyncClient, redis: Redis, streams: StreamSettings, body: object, fragment: str
) -> None:
    assert_error(await http.post("/v1/query", json=body, headers=AUTH), 422, fragment)
    assert await redis.xlen(streams.queries) == 0


async def test_invalid_path_and_query_parameters_are_422(http: httpx.AsyncClient) -> None:
    response = await http.delete("/v1/documents/d?version=-3", headers=AUTH)
    assert_error(response, 422, "query.version: Input should be greater than or equal to 0")
    response = await http.delete("/v1/documents/d?version=seven", headers=AUTH)
    assert_error(response, 422, "query.version: Input should be a valid integer")
    response = await http.get(f"/v1/documents/{'x' * 513}", headers=AUTH)
    assert_error(response, 422, "path.doc_id: String should have at most 512 characters")


async def test_unknown_routes_and_methods_are_json_errors(http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/v2/nothing", headers=AUTH), 404, "no such endpoint: /v2/nothing")
    response = await http.put("/v1/query", json={"text": "q"}, headers=AUTH)
    assert_error(response, 405, "PUT is not allowed")
    assert "POST" in response.headers["allow"]


async def test_unknown_document_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/documents/never/seen", headers=AUTH)
    assert_error(response, 404, "never acknowledged")


@pytest.mark.parametrize(
    ("path", "limit", "field"),
    [("/v1/documents", DOC_LIMIT, "text"), ("/v1/query", QUERY_LIMIT, "text")],
)
async def test_oversized_bodies_are_413_declared_or_streamed(
    http: httpx.AsyncClient, redis: Redis, streams: StreamSettings,
    path: str, limit: int, field: str,
) -> None:  # fmt: skip
    body = json.dumps({"doc_id": "big", field: "w" * limit}).encode()
    declared = await http.post(
        path, content=body, headers={**AUTH, "content-type": "application/json"}
    )
    assert_error(declared, 413, f"at most {limit:,} bytes")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    streamed = await http.post(
        path, content=chunks(), headers={**AUTH, "content-type": "application/json"}
    )
    assert "content-length" not in streamed.request.headers
    assert_error(streamed, 413, f"at most {limit:,} bytes")
    assert await redis.xlen(streams.docs) == await redis.xlen(streams.queries) == 0


async def test_api_keys_guard_v1_only(
    http: httpx.AsyncClient, redis: Redis, streams: StreamSettings
) -> None:
    doc = {"doc_id": "d", "text": "x"}
    missing = await http.post("/v1/documents", json=doc)
    wrong = await http.post("/v1/documents", json=doc, headers={"X-API-Key": "guess-123"})
    wrong_bearer = await http.post(
        "/v1/documents", json=doc, headers={"Authorization": "Bearer guess-123"}
    )
    basic = await http.get("/v1/documents/d", headers={"Authorization": f"Basic {API_KEY}"})
    for response in (missing, wrong, wrong_bearer, basic):
        error = assert_error(response, 401, "missing or invalid API key")
        assert "guess-123" not in response.text and API_KEY not in response.text, error
        assert response.headers["www-authenticate"] == "Bearer"
    assert await redis.xlen(streams.docs) == 0

    bearer = await http.post(
        "/v1/documents", json=doc, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    header = await http.post("/v1/documents", json=doc, headers={"X-API-Key": "other-key"})
    assert bearer.status_code == header.status_code == 202
    for open_path in ("/livez", "/readyz", "/metrics", "/openapi.json", "/docs"):
        assert (await http.get(open_path)).status_code == 200, open_path


async def test_auth_off_when_no_keys(redis_server: RedisServer, streams: StreamSettings) -> None:
    async with serving(make_app(redis_server.url, streams)) as url, httpx.AsyncClient() as http:
        response = await http.post(f"{url}/v1/documents", json={"doc_id": "d", "text": "x"})
        assert response.status_code == 202
        spec = (await http.get(f"{url}/openapi.json")).json()
    assert "securitySchemes" not in spec.get("components", {})
