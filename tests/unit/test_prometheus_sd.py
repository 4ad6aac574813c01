"""Prometheus http_sd target groups from the registry's records (provisioner/prometheus_sd.py).
Debian's Prometheus scrapes them in tests/integration/test_prometheus_sd.py."""

from __future__ import annotations

from provisioner.prometheus_sd import targets
from provisioner.records import Cluster, Node
from provisioner.states import NodeState


def node(mac: str, name: str | None, state: NodeState, ip: str | None) -> Node:
    return Node(mac, name, state, "nvidia-ampere", ip, "uefi", None, 0.0, 0.0)


def test_targets_are_the_appliance_and_the_nodes_on_their_image() -> None:
    nodes = [
        node("52:54:00:00:00:02", "node2", NodeState.DISCOVERED, "10.10.0.12"),  # no exporter yet
        node("52:54:00:00:00:01", "node1", NodeState.SERVING, "10.10.0.11"),
        node("52:54:00:00:00:00", "node0", NodeState.SERVING, "10.10.0.10"),
        node("52:54:00:00:00:03", "node3", NodeState.ENROLLED, None),  # no address: no target
        node("52:54:00:00:00:04", "node4", NodeState.FAILED, "10.10.0.14"),
    ]
    clusters = [Cluster("c", "llama-rpc", "m", "node0", ("node1",))]
    groups = targets(nodes, clusters, appliance="10.10.0.1:8080", node_exporter_port=9100)
    assert groups[0] == {
        "targets": ["10.10.0.1:8080"],
        "labels": {"node": "provisioner", "role": "appliance"},
    }
    assert [g["targets"] for g in groups[1:]] == [
        ["10.10.0.10:9100"], ["10.10.0.11:9100"], ["10.10.0.14:9100"],
    ]  # fmt: skip
    head, worker, failed = (g["labels"] for g in groups[1:])
    assert head == {
        "node": "node0", "mac": "52:54:00:00:00:00", "profile": "nvidia-ampere",
        "state": "serving", "cluster": "c", "role": "head",
    }  # fmt: skip
    assert worker["role"] == "worker" and failed["cluster"] == "" and failed["state"] == "failed"
