"""The NetworkPolicies of each rendering allow exactly the flows docs/kubernetes.md lists, checked
pod by pod with tests/deploy/netpol.py: only the stages and the gateway reach Redis, only the
embedder and the retriever reach Weaviate, only the generator (LLM) and the reranker (Cohere)
reach the internet, every pod resolves names, Prometheus scrapes every `http` port, only the
gateway takes connections from anywhere, and everything else in the namespace is denied."""

import dataclasses
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.deploy.kustomize import RENDERINGS, named, render
from tests.deploy.netpol import Endpoint, allowed, lets_through

PROMETHEUS = Endpoint("10.244.9.1", "monitoring", {"app.kubernetes.io/name": "prometheus"})
KEDA = Endpoint("10.244.9.2", "keda", {"app.kubernetes.io/name": "keda-operator"})
DNS = Endpoint("10.244.9.3", "kube-system", {"k8s-app": "kube-dns"}, {"dns": 53})
ELSEWHERE = Endpoint("10.244.9.4", "default", {"app": "other"})
INTERNET = Endpoint("203.0.113.7")
CLOUD_METADATA = Endpoint("169.254.169.254")
EXTERNAL_REDIS = Endpoint("192.0.2.10")
"""The address components/external-redis ships as its placeholder."""


def cluster(rendering: str) -> tuple[list[dict[str, Any]], dict[str, Endpoint], Endpoint, int]:
    """The rendering's policies, a pod per workload (by component or name), a stranger pod in
    the namespace, and the Redis the stages use with its port."""
    objs = render(rendering)
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    pods: dict[str, Endpoint] = {}
    workloads = [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    for number, workload in enumerate(workloads):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        [container] = workload["spec"]["template"]["spec"]["containers"]
        name = labels.get("app.kubernetes.io/component", labels["app.kubernetes.io/name"])
        pods[name] = Endpoint(
            f"10.244.0.{number + 1}",
            workload["metadata"]["namespace"],
            labels,
            {port["name"]: port["containerPort"] for port in container["ports"]},
        )
    [namespace] = {pod.namespace for pod in pods.values()}
    stranger = Endpoint("10.244.9.5", namespace, {"app": "other"})
    url = urlsplit(named(objs, "ConfigMap", "ragstream")["data"]["RAG_REDIS_URL"])
    return policies, pods, stranger, url.port or 6379


def redis_of(pods: dict[str, Endpoint]) -> Endpoint:
    return pods.get("redis", EXTERNAL_REDIS)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_only_the_stages_and_the_gateway_reach_redis(rendering: str) -> None:
    policies, pods, stranger, port = cluster(rendering)
    redis = redis_of(pods)
    for name, pod in [*pods.items(), ("stranger", stranger)]:
        is_client = pod.labels.get("app.kubernetes.io/name") == "ragstream"
        assert allowed(policies, pod, redis, port) == is_client, name
        if redis.namespace:  # and Redis's own policy agrees, whatever the client's says
            assert lets_through(policies, redis, "Ingress", pod, port) == is_client, name
    assert allowed(policies, KEDA, redis, port)  # the scalers read the groups' lag
    if redis.namespace:  # other namespaces' traffic to a Redis outside is not ours to police
        for outsider in (ELSEWHERE, PROMETHEUS):
            assert not allowed(policies, outsider, redis, port)


@pytest.mark.parametrize("rendering", [r for r in RENDERINGS if "prod" in r])
def test_only_the_embedder_and_the_retriever_reach_weaviate(rendering: str) -> None:
    policies, pods, stranger, _ = cluster(rendering)
    weaviate = pods["weaviate"]
    for name, pod in [*pods.items(), ("stranger", stranger)]:
        for port in (weaviate.ports["http"], weaviate.ports["grpc"]):
            expected = name in ("embedder", "retriever", "weaviate")
            assert allowed(policies, pod, weaviate, port) == expected, (name, port)
            assert lets_through(policies, weaviate, "Ingress", pod, port) == expected, name
    peer = dataclasses.replace(weaviate, ip="10.244.0.99")
    for port in weaviate.ports.values():  # gossip, data, raft between the cluster's nodes
        assert allowed(policies, peer, weaviate, port)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_only_the_generator_and_the_reranker_reach_the_internet(rendering: str) -> None:
    policies, pods, stranger, _ = cluster(rendering)
    for name, pod in [*pods.items(), ("stranger", stranger)]:
        assert allowed(policies, pod, INTERNET, 443) == (name in ("generator", "reranker")), name
        assert not allowed(policies, pod, INTERNET, 80), name
        for private in (CLOUD_METADATA, Endpoint("10.1.2.3"), Endpoint("172.20.0.1")):
            assert not allowed(policies, pod, private, 443), (name, private)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_every_pod_resolves_names_and_prometheus_scrapes_only_http_ports(rendering: str) -> None:
    policies, pods, _, _ = cluster(rendering)
    for name, pod in pods.items():
        assert allowed(policies, pod, DNS, 53, "UDP") and allowed(policies, pod, DNS, 53), name
        for port_name, port in pod.ports.items():
            expected = port_name == "http" and pod.labels["app.kubernetes.io/name"] == "ragstream"
            assert allowed(policies, PROMETHEUS, pod, port) == expected, (name, port_name)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_only_the_gateway_takes_connections_from_anywhere(rendering: str) -> None:
    policies, pods, stranger, _ = cluster(rendering)
    for name, pod in pods.items():
        for port_name, port in pod.ports.items():
            for source in (ELSEWHERE, INTERNET):
                expected = name == "gateway" and port_name == "http"
                assert allowed(policies, source, pod, port) == expected, (name, port_name)
            # The namespace's default: deny, both ways.
            assert not allowed(policies, stranger, pod, port), (name, port_name)
    assert not allowed(policies, ELSEWHERE, stranger, 8080)
