"""A real ingest path to break: an AOF-backed server, replicated stage processes, an index.

Every stage runs as its own OS process (`bench.reliability.faulty`, i.e. the real app plus the
injectable faults) with its stderr in a log file, so the suite can kill -9 one, restart the
server under it, and count afterwards what each replica did.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ragstream.redis_server import RedisServer, free_port, start_server
from ragstream.weaviate_server import WeaviateServer, start_weaviate
from shared.readiness import ready_key
from shared.settings import StoreSettings, StreamSettings, store_env

STAGES = ("chunker", "embedder")
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

FAST_FAILOVER = {
    "RECLAIM_IDLE_MS": "2000",
    "RECLAIM_INTERVAL_S": "0.5",
    "STALE_CONSUMER_IDLE_S": "5",
    "MAINTENANCE_INTERVAL_S": "2",
    "TRANSIENT_RETRY_S": "120",
    "GRACE_S": "20",
}
"""Stage settings for the suite: a dead consumer's entries are reclaimed after 2 s."""


def unique_streams(prefix: str) -> StreamSettings:
    names = ("docs", "chunks", "indexed", "queries", "retrieved", "reranked", "answers", "dlq")
    return StreamSettings(**{name: f"{prefix}.{name}" for name in names})  # type: ignore[arg-type]


@dataclass
class StageProcess:
    stage: str
    consumer: str
    process: "subprocess.Popen[bytes]"
    log_path: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_mb(self) -> float | None:
        """VmHWM: the process's peak resident memory so far."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return None

    def log_events(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines of this process whose `event` is `event`."""
        found: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return found
        with self.log_path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if f'"{event}"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == event:
                    found.append(record)
        return found


@dataclass
class Cluster:
    root: Path
    replicas: int = 2
    extra_env: dict[str, str] = field(default_factory=dict)
    backend: str = "lancedb"
    """The index: `lancedb` in `root/index`, or `weaviate` (a local server under `root`)."""
    server: RedisServer | None = None
    weaviate: WeaviateServer | None = None
    port: int | None = None
    streams: StreamSettings = field(default_factory=lambda: unique_streams("rel"))
    processes: list[StageProcess] = field(default_factory=list)
    _generation: Counter[str] = field(default_factory=Counter)

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def store(self) -> StoreSettings:
        """The index every stage writes to."""
        if self.backend == "lancedb":
            return StoreSettings(backend="lancedb", lancedb_path=self.index_dir)
        assert self.weaviate is not None
        return StoreSettings(
            backend="weaviate",
            weaviate_url=self.weaviate.url,
            weaviate_grpc_port=self.weaviate.ports.grpc,
            table="Reliability",
        )

    def start_weaviate(self) -> None:
        ports = self.weaviate.ports if self.weaviate is not None else None
        self.weaviate = start_weaviate(self.root / "weaviate", ports)

    def kill_weaviate(self) -> None:
        assert self.weaviate is not None
        self.weaviate.kill()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start_redis(self) -> None:
        self.server = start_server(self.root / "redis", self.port)
        self.port = self.server.port

    def kill_redis(self) -> None:
        assert self.server is not None
        self.server.kill()

    def env(self, stage: str, consumer: str) -> dict[str, str]:
        prefix = f"RAG_{stage.upper()}_"
        env = {
            **os.environ,
            "RAG_REDIS_URL": self.url,
            **store_env(self.store),
            "HF_HUB_OFFLINE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "RAG_EMBEDDING_THREADS": "1",
            "POD_NAME": consumer,
            prefix + "HTTP_PORT": str(free_port()),
            **{f"RAG_STREAM_{k.upper()}": str(v) for k, v in self.streams.model_dump().items()},
            **{prefix + key: value for key, value in FAST_FAILOVER.items()},
        }
        env.update(self.extra_env)
        return env

    def start_stage(self, stage: str, replica: int) -> StageProcess:
        key = f"{stage}-{replica}"
        self._generation[key] += 1
        consumer = f"{key}-g{self._generation[key]}-{uuid.uuid4().hex[:4]}"
        log_path = self.root / "logs" / f"{consumer}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.reliability.faulty", stage],
                env=self.env(stage, consumer),
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        started = StageProcess(stage, consumer, process, log_path)
        self.processes.append(started)
        return started

    def start(self, stages: Sequence[str] = STAGES) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_redis()
        if self.backend == "weaviate":
            self.start_weaviate()
        for stage in stages:
            for replica in range(self.replicas):
                self.start_stage(stage, replica)
        asyncio.run(self.wait_ready())

    def running(self, stage: str) -> list[StageProcess]:
        return [p for p in self.processes if p.stage == stage and p.alive]

    def input_stream(self, stage: str) -> str:
        return self.streams.docs if stage == "chunker" else self.streams.chunks

    async def wait_ready(self, within_s: float = 180.0) -> None:
        """Every running stage process has registered its consumer on its input stream."""
        deadline = time.monotonic() + within_s
        async with self.client() as redis:
            for proc in [p for p in self.processes if p.alive]:
                while True:
                    if not proc.alive:
                        tail = proc.log_path.read_text(errors="replace")[-2000:]
                        raise RuntimeError(f"{proc.consumer} exited: {tail}")
                    key = ready_key(self.input_stream(proc.stage), proc.stage, proc.consumer)
                    if await redis.exists(key):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{proc.consumer} not ready after {within_s:.0f} s")
                    await asyncio.sleep(0.2)

    async def consumers(self, redis: Redis, stage: str) -> dict[str, int]:
        """Consumer name → pending count, of the stage's group."""
        try:
            rows = await redis.xinfo_consumers(self.input_stream(stage), stage)
        except ResponseError:
            return {}
        return {_text(r["name"]): int(r["pending"]) for r in rows}

    def client(self) -> Redis:
        return Redis.from_url(self.url, socket_timeout=10)

    def signal(self, proc: StageProcess, sig: int, within_s: float = 30.0) -> int:
        proc.process.send_signal(sig)
        return proc.process.wait(within_s)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.alive:
                proc.process.send_signal(signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.process.wait(30)
            except subprocess.TimeoutExpired:
                proc.process.kill()
                proc.process.wait()
        if self.server is not None:
            self.server.stop()
        if self.weaviate is not None:
            self.weaviate.stop()

    async def quiescent(self, redis: Redis) -> bool:
        """Every group on the stage streams has read everything and has nothing pending."""
        for stage in STAGES:
            stream = self.input_stream(stage)
            info = await redis.xinfo_stream(stream)
            last = _text(info["last-generated-id"])
            for group in await redis.xinfo_groups(stream):
                if int(group["pending"]) or _text(group["last-delivered-id"]) != last:
                    return False
        return True

    async def wait_quiescent(self, within_s: float = 120.0) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                async with self.client() as redis:
                    if await self.quiescent(redis):
                        return
            except REDIS_DOWN:
                pass
            await asyncio.sleep(0.3)
        raise TimeoutError("streams did not drain")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def count_by_process(
    processes: Iterable[StageProcess], event: str, doc_prefix: str
) -> dict[str, int]:
    """How many `event` log lines about docs under `doc_prefix` each process wrote."""
    return {
        p.consumer: sum(
            1 for r in p.log_events(event) if str(r.get("doc_id", "")).startswith(doc_prefix)
        )
        for p in processes
    }
