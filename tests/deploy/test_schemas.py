"""Every object of every rendering is one the API server would accept, checked offline:
built-in kinds against the Kubernetes JSON schemas that kubernetes-validate bundles (strict: an
unknown field fails), KEDA's and prometheus-operator's custom resources against their CRDs'
openAPIV3Schema, vendored in schemas/ (unknown fields fail too, as `kubectl apply` reports them
with server-side strict field validation)."""

import functools
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.kustomize import RENDERINGS, render

KUBERNETES_VERSIONS = ("1.31", "1.37")
"""The oldest release the manifests support (unhealthyPodEvictionPolicy is GA) and the newest
kubernetes-validate 1.37.0 bundles."""
CRDS = Path(__file__).parent / "schemas"
CUSTOM_KINDS = {
    ("keda.sh", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
}


def closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields rejected wherever the API server would prune them: in
    objects that list `properties` and do not preserve unknown fields."""
    result = dict(schema)
    for key, value in schema.items():
        if key == "properties":
            result[key] = {name: closed(sub) for name, sub in value.items()}
        elif key in ("allOf", "anyOf", "oneOf"):
            result[key] = [closed(sub) for sub in value]
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            result[key] = closed(value)
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    group, version = api_version.split("/")
    crd = yaml.safe_load((CRDS / CUSTOM_KINDS[group, kind]).read_text())
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return jsonschema.Draft7Validator(closed(served["schema"]["openAPIV3Schema"]))


def custom(obj: dict[str, Any]) -> bool:
    return (obj["apiVersion"].split("/")[0], obj["kind"]) in CUSTOM_KINDS


def problems_of_builtin(obj: dict[str, Any], version: str) -> list[str]:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [error.message]
    return []


def problems_of_custom(obj: dict[str, Any]) -> list[str]:
    validator = crd_validator(obj["apiVersion"], obj["kind"])
    return [
        f"{'.'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(obj)
    ]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("rendering", RENDERINGS)
def test_builtin_objects_match_the_kubernetes_schemas(rendering: str, version: str) -> None:
    problems = {
        f"{obj['kind']}/{obj['metadata']['name']}": found
        for obj in render(rendering)
        if not custom(obj) and (found := problems_of_builtin(obj, version))
    }
    assert not problems


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_custom_resources_match_their_crds(rendering: str) -> None:
    objs = [obj for obj in render(rendering) if custom(obj)]
    assert Counter(obj["kind"] for obj in objs) == {
        "ScaledObject": 4,
        "TriggerAuthentication": 1,
        "PodMonitor": 1,
    }
    problems = {
        f"{obj['kind']}/{obj['metadata']['name']}": found
        for obj in objs
        if (found := problems_of_custom(obj))
    }
    assert not problems


def test_the_validation_rejects_unknown_fields_and_wrong_types() -> None:
    objs = render("overlays/prod")
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["paht"] = "/"
    scaled = next(o for o in objs if o["kind"] == "ScaledObject")
    scaled["spec"]["maxReplicas"] = 3
    [monitor] = [o for o in objs if o["kind"] == "PodMonitor"]
    monitor["spec"]["podMetricsEndpoints"][0]["interval"] = 15
    assert problems_of_builtin(deployment, KUBERNETES_VERSIONS[-1])
    assert problems_of_builtin({**deployment, "kind": "Deploymnet"}, KUBERNETES_VERSIONS[-1])
    assert problems_of_custom(scaled)
    assert problems_of_custom(monitor)
