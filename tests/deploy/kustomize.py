"""The Kubernetes manifests as kustomize renders them.

kustomize is a Go module, so it is built from source like Weaviate (ragstream.weaviate_server):
`go install sigs.k8s.io/kustomize/kustomize/v5@<KUSTOMIZE_VERSION>` into
`<cache>/kustomize/<version>/` (`RAGSTREAM_CACHE_DIR`, default `~/.cache/ragstream`), once per
pinned version; rendering needs no network after that. A build that fails fails the tests.
"""

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from ragstream.weaviate_server import cache_dir

KUSTOMIZE_VERSION = "v5.7.1"
MODULE = "sigs.k8s.io/kustomize/kustomize/v5"
K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
RENDERINGS = ("overlays/dev", "overlays/prod", "overlays/prod+external-redis")
"""What the tests render: each overlay as shipped, and prod with ../components/external-redis
in place of ../components/redis (what docs/kubernetes.md tells a user with their own Redis)."""


def kustomize_binary() -> Path:
    target = cache_dir() / "kustomize" / KUSTOMIZE_VERSION
    binary = target / "kustomize"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        pytest.fail("building kustomize needs the Go toolchain (`go`) on PATH")
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [go, "install", f"{MODULE}@{KUSTOMIZE_VERSION}"],
        env={**os.environ, "GOBIN": str(target.resolve()), "CGO_ENABLED": "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not binary.exists():
        pytest.fail(f"`go install {MODULE}@{KUSTOMIZE_VERSION}` failed: {result.stderr[-2000:]}")
    return binary


@functools.cache
def _build(rendering: str) -> str:
    folder, _, component = rendering.partition("+")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "k8s"
        shutil.copytree(K8S, root)
        if component:
            kustomization = root / folder / "kustomization.yaml"
            text = kustomization.read_text()
            swapped = text.replace("- ../../components/redis ", f"- ../../components/{component} ")
            assert swapped != text, f"{folder} does not list ../../components/redis"
            kustomization.write_text(swapped)
        result = subprocess.run(
            [str(kustomize_binary()), "build", str(root / folder)],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        pytest.fail(f"kustomize build {rendering} failed: {result.stderr}")
    return result.stdout


def render(rendering: str) -> list[dict[str, Any]]:
    """The objects of `rendering`: a folder under deploy/k8s, optionally `+<component>` to
    swap ../../components/redis for that component first."""
    return [doc for doc in yaml.safe_load_all(_build(rendering)) if doc]


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj
