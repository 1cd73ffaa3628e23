"""The Kubernetes manifests hold together: overlays name files that exist, the dev overlay
(LanceDB) never runs two embedders, the prod overlay runs Weaviate with its data on volumes and
API-key auth, and its stages mount no shared directory."""

import re
from pathlib import Path
from typing import Any

import yaml

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization(folder: Path) -> dict[str, Any]:
    return documents(folder / "kustomization.yaml")[0]


def objects(folder: Path) -> list[dict[str, Any]]:
    """Every object a kustomization's resources list (recursively), before patches."""
    found: list[dict[str, Any]] = []
    for resource in kustomization(folder)["resources"]:
        path = (folder / resource).resolve()
        assert path.exists(), f"{folder}: {resource} does not exist"
        found += objects(path) if path.is_dir() else documents(path)
    return found


def patches(folder: Path, kind: str, name: str) -> list[dict[str, Any]]:
    """The JSON-patch operations of `folder`'s kustomization that target this object."""
    ops: list[dict[str, Any]] = []
    for patch in kustomization(folder).get("patches", []):
        target = patch["target"]
        if target["kind"] == kind and re.fullmatch(target["name"], name):
            ops += yaml.safe_load(patch["patch"])
    return ops


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [obj] = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def test_base_has_every_stage_and_no_index() -> None:
    objs = objects(K8S / "base")
    stages = {o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"}
    assert stages == {f"ragstream-{s}" for s in
                      ("chunker", "embedder", "retriever", "reranker", "generator")}  # fmt: skip
    for deployment in (o for o in objs if o["kind"] == "Deployment"):
        assert "volumes" not in deployment["spec"]["template"]["spec"]
    config = named(objs, "ConfigMap", "ragstream")["data"]
    assert not any(key.startswith("RAG_STORE_") for key in config)


def test_dev_overlay_is_lancedb_with_exactly_one_embedder() -> None:
    dev = K8S / "overlays" / "dev"
    objs = objects(dev)
    config = {op["path"]: op["value"] for op in patches(dev, "ConfigMap", "ragstream")}
    assert config["/data/RAG_STORE_BACKEND"] == "lancedb"
    embedder = {op["path"]: op["value"] for op in patches(dev, "Deployment", "ragstream-embedder")}
    assert embedder["/spec/replicas"] == 1 and embedder["/spec/strategy"] == {"type": "Recreate"}
    scaled = named(objs, "ScaledObject", "ragstream-embedder")["spec"]
    assert scaled["minReplicaCount"] == scaled["maxReplicaCount"] == 1
    assert named(objs, "PersistentVolumeClaim", "ragstream-index")
    for stage in ("embedder", "retriever"):
        paths = {op["path"] for op in patches(dev, "Deployment", f"ragstream-{stage}")}
        assert "/spec/template/spec/volumes" in paths


def test_prod_overlay_runs_weaviate_and_stages_scale_freely() -> None:
    prod = K8S / "overlays" / "prod"
    objs = objects(prod)
    config = {op["path"]: op["value"] for op in patches(prod, "ConfigMap", "ragstream")}
    assert config["/data/RAG_STORE_BACKEND"] == "weaviate"
    assert config["/data/RAG_STORE_WEAVIATE_URL"] == "http://weaviate:8080"
    assert not any(o["kind"] == "PersistentVolumeClaim" for o in objs)
    weaviate = named(objs, "StatefulSet", "weaviate")["spec"]
    [container] = weaviate["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] == "false"
    assert env["AUTHENTICATION_APIKEY_ENABLED"] == "true"
    assert env["AUTHENTICATION_APIKEY_ALLOWED_KEYS"] == {
        "secretKeyRef": {"name": "weaviate", "key": "api-key"}
    }
    assert container["volumeMounts"][0]["mountPath"] == env["PERSISTENCE_DATA_PATH"]
    assert weaviate["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    for stage in ("embedder", "retriever"):
        [op] = [
            op for op in patches(prod, "Deployment", f"ragstream-{stage}")
            if op["path"].endswith("/env/-")
        ]  # fmt: skip
        assert op["value"]["name"] == "RAG_STORE_WEAVIATE_API_KEY"
    scaled = named(objs, "ScaledObject", "ragstream-embedder")["spec"]
    assert scaled["maxReplicaCount"] > 1
