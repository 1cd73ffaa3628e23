"""A server the project runs as a child process (Redis, Weaviate): stopping and killing it."""

import subprocess
from dataclasses import dataclass


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL (a crash, for fault tests)."""
        self.process.kill()
        self.process.wait()
