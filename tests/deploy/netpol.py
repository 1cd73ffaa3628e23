"""Whether NetworkPolicies let one endpoint open a connection to another, as the Kubernetes API
defines it: a pod selected by any policy of a direction (policyTypes) is isolated in that
direction, and then only a rule of one of those policies lets traffic through; a connection
needs the source's egress and the destination's ingress. Endpoints outside the cluster are never
isolated."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    ip: str
    namespace: str | None = None
    """None: outside the cluster."""
    labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    """Named container ports, for rules that name them."""


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions) against a set of labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, values = expression["key"], expression.get("values", [])
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[expression["operator"]]
        if not matched:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, endpoint: Endpoint) -> bool:
    if "ipBlock" in peer:
        address = ip_address(endpoint.ip)
        block = peer["ipBlock"]
        return address in ip_network(block["cidr"]) and not any(
            address in ip_network(excepted) for excepted in block.get("except", [])
        )
    if endpoint.namespace is None:
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": endpoint.namespace}
        in_namespace = selects(peer["namespaceSelector"], namespace_labels)
    else:
        in_namespace = endpoint.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector", {}), endpoint.labels)


def _port_matches(
    rule_ports: list[Mapping[str, Any]], port: int, protocol: str, destination: Endpoint
) -> bool:
    if not rule_ports:
        return True
    for rule_port in rule_ports:
        if rule_port.get("protocol", "TCP") != protocol:
            continue
        if "port" not in rule_port:
            return True
        first = rule_port["port"]
        if isinstance(first, str):
            first = destination.ports.get(first)
        if first is not None and first <= port <= rule_port.get("endPort", first):
            return True
    return False


def _policy_types(spec: Mapping[str, Any]) -> list[str]:
    return spec.get("policyTypes") or ["Ingress", *(["Egress"] if "egress" in spec else [])]


def lets_through(
    policies: list[dict[str, Any]],
    pod: Endpoint,
    direction: str,
    peer: Endpoint,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether `pod`'s own policies of `direction` ("Ingress" or "Egress") allow `peer`."""
    selecting = [
        policy
        for policy in policies
        if policy["metadata"]["namespace"] == pod.namespace
        and direction in _policy_types(policy["spec"])
        and selects(policy["spec"]["podSelector"], pod.labels)
    ]
    if pod.namespace is None or not selecting:
        return True
    rules, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    destination = peer if direction == "Egress" else pod
    return any(
        (
            not rule.get(peers)
            or any(_peer_matches(p, policy["metadata"]["namespace"], peer) for p in rule[peers])
        )
        and _port_matches(rule.get("ports", []), port, protocol, destination)
        for policy in selecting
        for rule in policy["spec"].get(rules, [])
    )


def allowed(
    policies: list[dict[str, Any]],
    source: Endpoint,
    destination: Endpoint,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether `source` may open a connection to `destination` on `port`."""
    egress = lets_through(policies, source, "Egress", destination, port, protocol)
    return egress and lets_through(policies, destination, "Ingress", source, port, protocol)
