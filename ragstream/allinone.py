"""`ragstream up`: every stage as a child process against one Redis — the same apps a Kubernetes
Deployment runs, no second code path. Starts an embedded server when no Redis URL is given."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from ragstream.child_processes import PARENT_PID_ENV, popen_options
from ragstream.redis_server import RedisServer, free_port, start_server
from shared.logging import FORMAT_ENV, resolve_format
from shared.readiness import ready_pattern
from shared.settings import StreamSettings

STAGES = ("chunker", "embedder", "retriever", "reranker", "generator")
URL_FILE = "redis-url"


class StageFailed(RuntimeError):
    """A stage process exited, or did not get ready in time."""


def stage_log_env(environ: Mapping[str, str]) -> dict[str, str]:
    """How stage processes log: in a terminal (see `shared.logging.resolve_format`) for people
    and only warnings and up, unless `RAG_<STAGE>_LOG_LEVEL` says otherwise, so that their
    lines do not bury the CLI's own; elsewhere JSON lines at each stage's level."""
    fmt = resolve_format(environ.get(FORMAT_ENV))
    env: dict[str, str] = {FORMAT_ENV: fmt}
    if fmt == "console":
        levels = (f"RAG_{stage.upper()}_LOG_LEVEL" for stage in STAGES)
        env |= {name: "WARNING" for name in levels if name not in environ}
    return env


def stage_inputs(streams: StreamSettings) -> dict[str, str]:
    return {
        "chunker": streams.docs,
        "embedder": streams.chunks,
        "retriever": streams.queries,
        "reranker": streams.retrieved,
        "generator": streams.reranked,
    }


@dataclass
class Pipeline:
    redis_url: str
    data_dir: Path
    server: RedisServer | None = None
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    http_ports: dict[str, int] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **stage_log_env(os.environ),
            "RAG_REDIS_URL": self.redis_url,
            "RAG_STORE_LANCEDB_PATH": os.environ.get(
                "RAG_STORE_LANCEDB_PATH", str(self.data_dir / "index")
            ),
            "HF_HUB_OFFLINE": "1",
            "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1"),
        }

    def start_stage(self, stage: str, extra_env: dict[str, str] | None = None) -> None:
        """Start `stage`; its /livez, /readyz and /metrics go on a free port (`http_ports`)
        unless `RAG_<STAGE>_HTTP_PORT` is set. In a session of its own: Ctrl-C in a terminal
        reaches this process only, which stops the stages in order (`stop`); if this process
        dies without stopping it, the stage stops itself (`ragstream.child_processes`)."""
        env = {**self.env(), **(extra_env or {})}
        port_var = f"RAG_{stage.upper()}_HTTP_PORT"
        env.setdefault(port_var, str(free_port()))
        self.http_ports[stage] = int(env[port_var])
        env[PARENT_PID_ENV] = str(os.getpid())  # it stops itself if this process is gone
        self.children[stage] = subprocess.Popen(
            [sys.executable, "-m", "ragstream", "run", stage], env=env, **popen_options()
        )

    def wait_ready(
        self,
        stages: tuple[str, ...],
        timeout: float = 120.0,
        streams: StreamSettings | None = None,
        on_ready: Callable[[str], None] | None = None,
    ) -> None:
        """Ready = every stage has announced a consumer reading its input stream; `on_ready` is
        told each stage's name as it is."""
        client = redis.Redis.from_url(self.redis_url)
        inputs = stage_inputs(streams or StreamSettings())
        deadline = time.monotonic() + timeout
        try:
            for stage in stages:
                while True:
                    self._check_alive(stage)
                    if next(client.scan_iter(match=ready_pattern(inputs[stage], stage)), None):
                        if on_ready is not None:
                            on_ready(stage)
                        break
                    if time.monotonic() > deadline:
                        raise StageFailed(f"stage {stage} not ready after {timeout:.0f} s")
                    time.sleep(0.2)
        finally:
            client.close()

    def _check_alive(self, stage: str) -> None:
        child = self.children.get(stage)
        if child is not None and child.poll() is not None:
            raise StageFailed(f"stage {stage} exited with code {child.returncode}")

    def stop(self, grace_s: float = 30.0) -> None:
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self.server is not None:
            self.server.stop()
            (self.data_dir / URL_FILE).unlink(missing_ok=True)


def start_pipeline(
    data_dir: Path,
    redis_url: str | None = None,
    stages: tuple[str, ...] = STAGES,
    extra_env: dict[str, str] | None = None,
) -> Pipeline:
    data_dir.mkdir(parents=True, exist_ok=True)
    server = None
    if redis_url is None:
        server = start_server(data_dir / "redis")
        redis_url = server.url
        (data_dir / URL_FILE).write_text(redis_url)
    pipeline = Pipeline(redis_url, data_dir, server)
    try:
        for stage in stages:
            pipeline.start_stage(stage, extra_env)
    except BaseException:
        pipeline.stop()
        raise
    return pipeline


@contextmanager
def running(
    data_dir: Path,
    redis_url: str | None = None,
    stages: tuple[str, ...] = STAGES,
    extra_env: dict[str, str] | None = None,
    streams: StreamSettings | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> Iterator[Pipeline]:
    """The stages started, ready, and stopped (with the embedded server, if one was started)."""
    pipeline = start_pipeline(data_dir, redis_url, stages, extra_env)
    try:
        pipeline.wait_ready(stages, streams=streams, on_ready=on_ready)
        yield pipeline
    finally:
        pipeline.stop()


def env_redis_url() -> str | None:
    return os.environ.get("RAG_REDIS_URL") or os.environ.get("REDIS_URL") or None


def configured_redis_url(data_dir: Path) -> str | None:
    """REDIS_URL / RAG_REDIS_URL if set, else the URL a running `ragstream up` wrote."""
    url = env_redis_url()
    if url:
        return url
    url_file = data_dir / URL_FILE
    return url_file.read_text().strip() if url_file.exists() else None
