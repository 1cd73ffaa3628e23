"""A real stage process exports its spans by OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
set, continuing the trace its input entry carries."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from redis.asyncio import Redis

from ragstream.redis_server import RedisServer
from shared import wire
from shared.contracts import DocUpsert
from shared.settings import StreamSettings
from tests.conftest import stream_env

pytestmark = pytest.mark.integration
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint that keeps every exported span."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[tuple[str, str]] = []  # (name, trace id hex)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.server.spans += [(s.name, s.trace_id.hex()) for s in scope.spans]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


async def test_stage_process_exports_its_spans(
    redis_server: RedisServer, redis: Redis, streams: StreamSettings, collector: Collector,
    tmp_path: Path,
) -> None:
    env = {
        **os.environ, **stream_env(streams), "RAG_REDIS_URL": redis_server.url,
        "RAG_CHUNKER_HTTP_PORT": "0", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }  # fmt: skip
    log = tmp_path / "chunker.log"
    with log.open("wb") as stderr:
        chunker = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
            [sys.executable, "-m", "ragstream", "run", "chunker"], env=env,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        fields = wire.encode(DocUpsert(doc_id="d1", version=1, text="Traced text."))
        fields[b"traceparent"] = PARENT.encode()
        await redis.xadd(streams.docs, fields)
        for _ in range(600):
            if ("chunker process", TRACE_ID) in collector.spans:
                break
            await asyncio.sleep(0.1)
        assert ("chunker process", TRACE_ID) in collector.spans, log.read_text()[-2000:]
        assert (f"{streams.docs} wait", TRACE_ID) in collector.spans
        [(_, chunks)] = await redis.xrange(streams.chunks)
        assert TRACE_ID.encode() in chunks[b"traceparent"]
    finally:
        chunker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(chunker.wait, 30)
