"""Probes, metrics and shutdown: what an orchestrator and Prometheus see."""

import asyncio
import json
import signal
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer, free_port
from shared.contracts import Answer
from shared.settings import StreamSettings
from tests.gateway.conftest import gateway_env, make_app, serving, start_gateway
from tests.gateway.test_replies import queries, reply

SECRET = "gw-key-never-logged-5d1"


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Label sets → value of the samples called `name` in a /metrics body."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    }


async def test_redis_down_is_not_ready_and_503_not_500(streams: StreamSettings) -> None:
    app = make_app(f"redis://127.0.0.1:{free_port()}/0", streams)
    async with serving(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        assert (await http.get("/livez")).status_code == 200
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["ready"] is False
        assert any(p.startswith("redis") for p in ready.json()["problems"])
        for response in (
            await http.post("/v1/documents", json={"doc_id": "d", "text": "x"}),
            await http.delete("/v1/documents/d"),
            await http.get("/v1/documents/d"),
            await http.post("/v1/query", json={"text": "q"}),
        ):
            assert response.status_code == 503, response.text
            assert "unreachable" in response.json()["message"]


async def test_metrics_count_by_route_template(
    redis_server: RedisServer, streams: StreamSettings
) -> None:
    async with (
        serving(make_app(redis_server.url, streams)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        before = (await http.get("/metrics")).text
        for doc_id in ("a", "b/c", "d%2Fe"):
            assert (await http.get(f"/v1/documents/{doc_id}")).status_code == 404
        assert (await http.get("/nowhere/at/all")).status_code == 404
        assert (await http.post("/v1/query", json={"text": ""})).status_code == 422
        after = (await http.get("/metrics")).text

    def delta(name: str, **labels: str) -> float:
        key = tuple(sorted(labels.items()))
        return samples(after, name).get(key, 0.0) - samples(before, name).get(key, 0.0)

    total = "ragstream_gateway_requests_total"
    assert delta(total, route="/v1/documents/{doc_id}", status="404") == 3
    assert delta(total, route="unmatched", status="404") == 1
    assert delta(total, route="/v1/query", status="422") == 1
    assert delta("ragstream_gateway_request_seconds_count", route="/v1/documents/{doc_id}") == 3
    routes = {dict(k)["route"] for k in samples(after, total)}
    assert not any("nowhere" in r or r.endswith("/a") for r in routes), routes


async def test_sigterm_drains_then_exits_and_deletes_the_reply_stream(
    redis_server: RedisServer, redis: Redis, streams: StreamSettings, tmp_path: Path
) -> None:
    port = free_port()
    env = gateway_env(
        redis_server.url, streams, port=str(port), host="127.0.0.1", drain_s="2", api_keys=SECRET
    )
    log = tmp_path / "gateway.log"
    gateway = start_gateway(["-m", "services.gateway"], env, port, log)
    try:
        async with httpx.AsyncClient(
            base_url=gateway.url, timeout=30, headers={"X-API-Key": SECRET}
        ) as http:
            pending = asyncio.create_task(
                http.post("/v1/query", json={"text": "q"}, headers={"X-Request-ID": "req-42"})
            )
            (query,) = await queries(redis, streams, 1)
            await reply(redis, query, Answer(query_id=query.query_id, text="ok"))
            answered = await pending
            assert answered.status_code == 200 and answered.headers["x-request-id"] == "req-42"
            assert query.reply_to is not None and await redis.exists(query.reply_to)

            gateway.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            ready = await http.get("/readyz")
            assert ready.status_code == 503 and "draining" in ready.json()["problems"]
            assert (await http.get("/livez")).status_code == 200
            accepted = await http.post("/v1/documents", json={"doc_id": "d", "text": "x"})
            assert accepted.status_code == 202  # still serving while draining
        code = await asyncio.to_thread(gateway.process.wait, 30)
    finally:
        gateway.stop()
    assert code == 0
    assert not await redis.exists(query.reply_to)

    text = log.read_text()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    access = [x for x in lines if x["event"] == "request" and x["route"] == "/v1/query"]
    assert len(access) == 1
    assert access[0]["request_id"] == "req-42" and access[0]["query_id"] == query.query_id
    assert access[0]["status"] == 200 and access[0]["level"] == "info"
    assert any(x["event"] == "draining" for x in lines)
