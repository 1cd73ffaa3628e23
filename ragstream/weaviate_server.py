"""A local Weaviate server for the all-in-one mode, the tests and the benches.

Weaviate is a Go module, so it is built from source with the Go toolchain, never downloaded as a
binary: `go install github.com/weaviate/weaviate/cmd/weaviate-server@<WEAVIATE_TAG>` into
`<cache>/weaviate/<tag>/` (`RAGSTREAM_CACHE_DIR`, default `~/.cache/ragstream`). The build runs
once per pinned tag (a few minutes the first time; Go's module and build caches make a rebuild
quick) and is reused after that.

The server runs as a single node on loopback: every port (HTTP, gRPC, gossip, data, raft, raft
RPC) is a free one, anonymous access, no vectorizer modules, single-node raft, telemetry and
profiling off, persistence in the given data directory. Restarting it on the same ports and
directory brings the data back.
"""

import contextlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ragstream.child_processes import popen_options
from ragstream.redis_server import free_port
from ragstream.server_process import ServerProcess
from shared.settings import StoreSettings

WEAVIATE_TAG = "v1.35.2"
"""The server release, the newest the pinned `weaviate-client` (4.24) supports."""
MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"


class WeaviateUnavailable(RuntimeError):
    """The server could not be built or started (the message says why)."""


def cache_dir() -> Path:
    root = os.environ.get("RAGSTREAM_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "ragstream"


def server_binary(tag: str = WEAVIATE_TAG, *, build: bool = True) -> Path:
    """The cached `weaviate-server` of `tag`, built with `go install` if it is not there yet."""
    target = cache_dir() / "weaviate" / tag
    binary = target / "weaviate-server"
    if binary.exists() or not build:
        return binary
    go = shutil.which("go")
    if go is None:
        raise WeaviateUnavailable("building Weaviate needs the Go toolchain (`go`) on PATH")
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [go, "install", f"{MODULE}@{tag}"],
        env={**os.environ, "GOBIN": str(target.resolve()), "CGO_ENABLED": "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not binary.exists():
        raise WeaviateUnavailable(
            f"`go install {MODULE}@{tag}` failed ({result.returncode}): {result.stderr[-2000:]}"
        )
    return binary


@dataclass
class Ports:
    http: int
    grpc: int
    gossip: int
    data: int
    raft: int
    raft_rpc: int

    @classmethod
    def free(cls) -> "Ports":
        return cls(*(free_port() for _ in range(6)))


@dataclass
class WeaviateServer(ServerProcess):
    ports: Ports
    data_dir: Path
    binary: Path
    api_key: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def env(self) -> dict[str, str]:
        """What points a stage at this server (`RAG_STORE_*`)."""
        return {
            "RAG_STORE_BACKEND": "weaviate",
            "RAG_STORE_WEAVIATE_URL": self.url,
            "RAG_STORE_WEAVIATE_GRPC_PORT": str(self.ports.grpc),
        }

    def restart(self, timeout: float = 60.0) -> "WeaviateServer":
        """Start again on the same ports and data directory (after `stop` or `kill`)."""
        return start_weaviate(
            self.data_dir, self.ports, binary=self.binary, timeout=timeout, api_key=self.api_key
        )


def server_env(data_dir: Path, ports: Ports, api_key: str | None = None) -> dict[str, str]:
    auth = (
        {
            "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "false",
            "AUTHENTICATION_APIKEY_ENABLED": "true",
            "AUTHENTICATION_APIKEY_ALLOWED_KEYS": api_key,
            "AUTHENTICATION_APIKEY_USERS": "ragstream",
            "AUTHORIZATION_ADMINLIST_ENABLED": "true",
            "AUTHORIZATION_ADMINLIST_USERS": "ragstream",
        }
        if api_key
        else {"AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true"}
    )
    return {
        **auth,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PERSISTENCE_DATA_PATH": str(data_dir.resolve()),
        "DEFAULT_VECTORIZER_MODULE": "none",
        "ENABLE_MODULES": "",
        "DISABLE_TELEMETRY": "true",
        "GO_PROFILING_DISABLE": "true",
        "PROMETHEUS_MONITORING_ENABLED": "false",
        "LOG_LEVEL": "warning",
        "LOG_FORMAT": "json",
        "QUERY_DEFAULTS_LIMIT": "25",
        "GRPC_PORT": str(ports.grpc),
        "CLUSTER_HOSTNAME": "node1",
        "CLUSTER_BIND_ADDR": "127.0.0.1",
        "CLUSTER_ADVERTISE_ADDR": "127.0.0.1",
        "CLUSTER_GOSSIP_BIND_PORT": str(ports.gossip),
        "CLUSTER_DATA_BIND_PORT": str(ports.data),
        "RAFT_PORT": str(ports.raft),
        "RAFT_INTERNAL_RPC_PORT": str(ports.raft_rpc),
        "RAFT_JOIN": f"node1:{ports.raft_rpc}",
        "RAFT_BOOTSTRAP_EXPECT": "1",
        "RAFT_DRAIN_SLEEP": "1ms",
        "RAFT_TIMEOUTS_MULTIPLIER": "1",
        "GOMEMLIMIT": os.environ.get("RAGSTREAM_WEAVIATE_GOMEMLIMIT", "2GiB"),
    }


def start_weaviate(
    data_dir: Path,
    ports: Ports | None = None,
    *,
    binary: Path | None = None,
    timeout: float = 90.0,
    api_key: str | None = None,
) -> WeaviateServer:
    """Build (once) and start a server keeping its data in `data_dir`; wait until it is ready.

    With `api_key`, anonymous access is off and that key is the one admin (tests of
    authenticated deployments; the key is in the server's environment, not for real secrets).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = binary or server_binary()
    ports = ports or Ports.free()
    log_file = (data_dir / "server.log").open("ab")
    process = subprocess.Popen(
        [str(binary), "--host", "127.0.0.1", "--port", str(ports.http), "--scheme", "http"],
        env=server_env(data_dir, ports, api_key),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        **popen_options(),  # its own session; SIGTERM when this process ends
    )
    log_file.close()
    server = WeaviateServer(process, ports, data_dir, binary, api_key)
    deadline = time.monotonic() + timeout
    ready = f"{server.url}/v1/.well-known/ready"
    while True:
        try:
            with urllib.request.urlopen(ready, timeout=1.0) as response:
                if response.status == 200:
                    return server
        except (urllib.error.URLError, OSError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = (data_dir / "server.log").read_text(errors="replace")[-3000:]
            raise WeaviateUnavailable(
                f"Weaviate did not become ready on {server.url} within {timeout:.0f} s: {tail}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def configured_or_local(data_dir: Path) -> Iterator[StoreSettings]:
    """Store settings for Weaviate: `WEAVIATE_URL`'s cluster if set, else a local server with
    its data in `data_dir`, started here and stopped on exit."""
    settings = StoreSettings().model_copy(update={"backend": "weaviate"})
    if settings.weaviate_url:
        yield settings
        return
    server = start_weaviate(data_dir)
    try:
        yield settings.model_copy(
            update={"weaviate_url": server.url, "weaviate_grpc_port": server.ports.grpc}
        )
    finally:
        server.stop()
