"""The gateway's own OpenAPI document: it declares the errors and the auth, and schemathesis,
fuzzing every operation against the running gateway (real Redis, no stages, 0.1 s query
timeouts), finds no 5xx and no response that differs from the document."""

from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from ragstream.redis_server import RedisServer, free_port
from tests.conftest import unique_streams
from tests.gateway.conftest import API_KEY, AUTH, gateway_env, start_gateway

QUERY = "POST /v1/query"
WITH_INPUT = [
    QUERY, "POST /v1/documents", "GET /v1/documents/{doc_id}", "DELETE /v1/documents/{doc_id}",
]  # fmt: skip
OPERATIONS = [*WITH_INPUT, "GET /livez", "GET /readyz", "GET /metrics"]
FUZZ_AUTH = {**AUTH, "Authorization": f"Bearer {API_KEY}"}
"""Both declared schemes explicit, so schemathesis knows the credentials are valid ones."""
MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def fuzzed_gateway(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    port = free_port()
    env = gateway_env(
        redis_server.url, unique_streams(), api_keys=API_KEY,
        query_timeout_s="0.05", max_query_timeout_s="0.1", max_document_bytes="65536",
    )  # fmt: skip
    command = ["-m", "uvicorn", "services.gateway.app:app", "--port", str(port)]
    gateway = start_gateway(command, env, port, tmp_path_factory.mktemp("fuzz") / "gateway.log")
    yield gateway.url
    gateway.stop()


@pytest.fixture(scope="module")
def api_schema(fuzzed_gateway: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzzed_gateway}/openapi.json")


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    assert {result.ok().label for result in api_schema.get_all_operations()} == set(OPERATIONS)


@pytest.mark.parametrize(
    ("label", "mode"),
    [(label, mode) for label in OPERATIONS for mode in schemathesis.GenerationMode
     if mode.is_positive or label in WITH_INPUT],
)  # fmt: skip
def test_fuzzed_requests_get_documented_responses(
    api_schema: schemathesis.BaseSchema, label: str, mode: schemathesis.GenerationMode
) -> None:
    """Negative data (schema violations) for every operation that takes any input."""
    method, path = label.split(" ", 1)

    @given(case=api_schema[path][method].as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def fuzz(case: schemathesis.Case) -> None:
        response = case.call(headers=FUZZ_AUTH, timeout=10)
        # no stages run here: a valid query's documented outcome is 504, every other 5xx fails
        unanswered = label == QUERY and response.status_code == 504
        case.validate_response(
            response, headers=FUZZ_AUTH, transport_kwargs={"headers": FUZZ_AUTH, "timeout": 10},
            excluded_checks=[not_a_server_error] if unanswered else None,
        )  # fmt: skip

    fuzz()


def test_document_declares_errors_auth_and_streaming(fuzzed_gateway: str) -> None:
    spec = httpx.get(f"{fuzzed_gateway}/openapi.json").json()
    query = spec["paths"]["/v1/query"]["post"]
    assert {"200", "401", "413", "422", "503", "504"} <= set(query["responses"])
    assert "text/event-stream" in query["responses"]["200"]["content"]
    error = query["responses"]["504"]["content"]["application/json"]["schema"]["$ref"]
    assert error.endswith("/ErrorResponse")
    assert set(spec["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    document = spec["paths"]["/v1/documents/{doc_id}"]
    assert set(document) == {"get", "delete"} and "404" in document["get"]["responses"]
    assert "security" not in spec["paths"]["/readyz"]["get"]
    docs = httpx.get(f"{fuzzed_gateway}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
