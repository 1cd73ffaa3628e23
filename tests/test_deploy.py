"""The Kubernetes manifests, as kustomize renders them (tests/deploy/kustomize.py), hold
together: the dev overlay (LanceDB) never runs two embedders, the prod overlay runs Weaviate with
its data on volumes and API-key auth; every Deployment is probed, hardened, sized and has a
disruption budget; Redis is durable and password-protected; KEDA reads the lag of each stage's
own group on that same Redis. Schemas: tests/deploy/test_schemas.py; network policies:
tests/deploy/test_network_policies.py."""

from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.kustomize import RENDERINGS, named, render

STAGES = ("chunker", "embedder", "retriever", "reranker", "generator")
INPUT_STREAM = {
    "chunker": "RAG_STREAM_DOCS",
    "embedder": "RAG_STREAM_CHUNKS",
    "retriever": "RAG_STREAM_QUERIES",
    "reranker": "RAG_STREAM_RETRIEVED",
    "generator": "RAG_STREAM_RERANKED",
}
REDIS_PASSWORD = {"secretKeyRef": {"name": "redis", "key": "password"}}


def of_kind(objs: list[dict[str, Any]], *kinds: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in kinds]


def component(workload: dict[str, Any]) -> str:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return str(labels.get("app.kubernetes.io/component", labels["app.kubernetes.io/name"]))


def only_container(workload: dict[str, Any]) -> Any:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return container


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def config(objs: list[dict[str, Any]]) -> Any:
    return named(objs, "ConfigMap", "ragstream")["data"]


def test_base_has_every_stage_and_the_gateway_and_no_index_or_redis() -> None:
    objs = render("base")
    assert {component(d) for d in of_kind(objs, "Deployment")} == {*STAGES, "gateway"}
    for deployment in of_kind(objs, "Deployment"):
        assert "volumes" not in deployment["spec"]["template"]["spec"]
    assert not any(key.startswith(("RAG_STORE_", "RAG_REDIS_")) for key in config(objs))
    assert not of_kind(objs, "StatefulSet")


def test_dev_overlay_is_lancedb_with_exactly_one_embedder() -> None:
    objs = render("overlays/dev")
    settings = config(objs)
    assert settings["RAG_STORE_BACKEND"] == "lancedb"
    embedder = named(objs, "Deployment", "ragstream-embedder")["spec"]
    assert embedder["replicas"] == 1 and embedder["strategy"] == {"type": "Recreate"}
    scaled = named(objs, "ScaledObject", "ragstream-embedder")["spec"]
    assert scaled["minReplicaCount"] == scaled["maxReplicaCount"] == 1
    claim = named(objs, "PersistentVolumeClaim", "ragstream-index")["metadata"]["name"]
    for stage in ("embedder", "retriever"):
        pod = named(objs, "Deployment", f"ragstream-{stage}")["spec"]["template"]["spec"]
        [volume] = pod["volumes"]
        assert volume["persistentVolumeClaim"] == {"claimName": claim}
        [container] = pod["containers"]
        [mount] = container["volumeMounts"]
        assert mount["name"] == volume["name"]
        assert settings["RAG_STORE_LANCEDB_PATH"].startswith(mount["mountPath"] + "/")
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


def test_prod_overlay_runs_weaviate_and_stages_scale_freely() -> None:
    objs = render("overlays/prod")
    settings = config(objs)
    assert settings["RAG_STORE_BACKEND"] == "weaviate"
    url = urlsplit(settings["RAG_STORE_WEAVIATE_URL"])
    assert named(objs, "Service", url.hostname or "")["spec"]["ports"][0]["port"] == url.port
    assert not of_kind(objs, "PersistentVolumeClaim")
    weaviate = named(objs, "StatefulSet", "weaviate")["spec"]
    container = only_container(named(objs, "StatefulSet", "weaviate"))
    server_env = env(container)
    assert server_env["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] == "false"
    assert server_env["AUTHENTICATION_APIKEY_ENABLED"] == "true"
    api_key = {"secretKeyRef": {"name": "weaviate", "key": "api-key"}}
    assert server_env["AUTHENTICATION_APIKEY_ALLOWED_KEYS"] == api_key
    assert container["volumeMounts"][0]["mountPath"] == server_env["PERSISTENCE_DATA_PATH"]
    assert weaviate["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    for deployment in of_kind(objs, "Deployment"):
        stage_env = env(only_container(deployment))
        has_key = component(deployment) in ("embedder", "retriever")
        assert stage_env.get("RAG_STORE_WEAVIATE_API_KEY") == (api_key if has_key else None)
        assert "volumes" not in deployment["spec"]["template"]["spec"]
    assert named(objs, "ScaledObject", "ragstream-embedder")["spec"]["maxReplicaCount"] > 1


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_deployment_is_probed_on_its_http_port(rendering: str) -> None:
    for deployment in of_kind(render(rendering), "Deployment"):
        container = only_container(deployment)
        [port] = container["ports"]
        assert port["name"] == "http"
        name = component(deployment)
        if name == "gateway":
            assert port["containerPort"] == 8080
        else:  # the stage's HTTP server listens where the container port says
            assert env(container)[f"RAG_{name.upper()}_HTTP_PORT"] == str(port["containerPort"])
        probes = {
            kind: container[f"{kind}Probe"]["httpGet"]
            for kind in ("startup", "liveness", "readiness")
        }
        assert probes == {
            "startup": {"path": "/livez", "port": "http"},
            "liveness": {"path": "/livez", "port": "http"},
            "readiness": {"path": "/readyz", "port": "http"},
        }, name
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, name


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_workload_is_sized_and_meets_the_restricted_pod_security_standard(
    rendering: str,
) -> None:
    for workload in of_kind(render(rendering), "Deployment", "StatefulSet"):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert not security.get("privileged"), name
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys(), name
            assert "memory" in container["resources"]["limits"], name
            assert {"readinessProbe", "livenessProbe"} <= container.keys(), name


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_deployment_has_a_disruption_budget_that_lets_drains_through(
    rendering: str,
) -> None:
    objs = render(rendering)
    budgets = of_kind(objs, "PodDisruptionBudget")
    for deployment in of_kind(objs, "Deployment"):
        selector = deployment["spec"]["selector"]
        [budget] = [b["spec"] for b in budgets if b["spec"]["selector"] == selector]
        # A stage away only lets its lag grow: one pod may always go, unready ones too.
        assert budget["maxUnavailable"] >= 1 and "minAvailable" not in budget
        assert budget["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


@pytest.mark.parametrize("rendering", ["overlays/dev", "overlays/prod"])
def test_redis_is_durable_password_protected_and_used_by_every_pod(rendering: str) -> None:
    objs = render(rendering)
    redis = named(objs, "StatefulSet", "redis")["spec"]
    pod = redis["template"]["spec"]
    container = only_container(named(objs, "StatefulSet", "redis"))
    repository, tag = container["image"].split(":")
    assert repository == "redis" and tuple(map(int, tag.split(".")[:2])) >= (7, 0)
    [config_volume] = [v for v in pod["volumes"] if "configMap" in v]
    conf = named(objs, "ConfigMap", config_volume["configMap"]["name"])["data"]["redis.conf"]
    settings = dict(
        line.split(maxsplit=1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    assert settings["appendonly"] == "yes" and settings["appendfsync"] == "everysec"
    assert settings["maxmemory-policy"] == "noeviction"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[redis["volumeClaimTemplates"][0]["metadata"]["name"]] == settings["dir"]
    [script] = container["args"]
    assert f"exec redis-server {mounts[config_volume['name']]}/redis.conf - <<EOF" in script
    assert 'requirepass "$REDIS_PASSWORD"' in script
    assert env(container)["REDIS_PASSWORD"] == REDIS_PASSWORD
    headless = named(objs, "Service", redis["serviceName"])["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == redis["selector"]["matchLabels"]
    url = urlsplit(config(objs)["RAG_REDIS_URL"])
    assert url.password is None
    service = named(objs, "Service", url.hostname or "")["spec"]
    assert service["selector"] == redis["selector"]["matchLabels"]
    assert service["ports"][0]["port"] == url.port
    for deployment in of_kind(objs, "Deployment"):
        stage = only_container(deployment)
        assert env(stage)["RAG_REDIS_PASSWORD"] == REDIS_PASSWORD
        assert {"configMapRef": {"name": "ragstream"}} in stage["envFrom"]
        assert not any("secretRef" in source for source in stage["envFrom"])


def test_external_redis_component_replaces_the_statefulset() -> None:
    objs = render("overlays/prod+external-redis")
    assert [s["metadata"]["name"] for s in of_kind(objs, "StatefulSet")] == ["weaviate"]
    names = {o["metadata"]["name"] for o in of_kind(objs, "Service", "ConfigMap")}
    assert not names & {"redis", "redis-headless"}
    url = urlsplit(config(objs)["RAG_REDIS_URL"])
    assert url.scheme == "rediss"
    [rule] = named(objs, "NetworkPolicy", "ragstream-to-redis")["spec"]["egress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": url.port}]


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_keda_scales_each_stage_on_its_own_groups_lag_in_the_stages_redis(
    rendering: str,
) -> None:
    objs = render(rendering)
    settings = config(objs)
    url = urlsplit(settings["RAG_REDIS_URL"])
    auth = {
        o["metadata"]["name"]: o["spec"]["secretTargetRef"]
        for o in of_kind(objs, "TriggerAuthentication")
    }
    scaled = of_kind(objs, "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {
        f"ragstream-{stage}" for stage in ("embedder", "retriever", "reranker", "generator")
    }
    for scaled_object in scaled:
        target = scaled_object["spec"]["scaleTargetRef"]["name"]
        stage = component(named(objs, "Deployment", target))
        [trigger] = scaled_object["spec"]["triggers"]
        metadata = trigger["metadata"]
        assert metadata["stream"] == settings[INPUT_STREAM[stage]]
        assert metadata["consumerGroup"] == stage
        # KEDA's operator resolves names from its own namespace: in-cluster ones need ours.
        namespace = scaled_object["metadata"]["namespace"]
        host = url.hostname if "." in (url.hostname or "") else f"{url.hostname}.{namespace}.svc"
        assert metadata["address"] == f"{host}:{url.port}"
        assert (metadata.get("enableTLS") == "true") == (url.scheme == "rediss")
        assert auth[trigger["authenticationRef"]["name"]] == [
            {"parameter": "password", **REDIS_PASSWORD["secretKeyRef"]}
        ]
