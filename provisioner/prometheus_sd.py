"""Prometheus HTTP service discovery (``http_sd``): the scrape targets, from the registry.

Served at ``GET /api/v1/prometheus/targets`` (routes_api.py) in Prometheus's http_sd
format: a list of target groups, ``{"targets": ["10.10.0.11:9100"], "labels": {...}}``.
One group per node that runs its profile's image (its node exporter listens on
``[prometheus] node_exporter_port``, 9100 by default), labelled ``node``, ``mac``,
``profile``, ``state``, ``cluster`` and ``role`` (head, worker; empty when in none); and
one for the appliance itself (its own ``/metrics``), ``role="appliance"``. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from provisioner.records import Cluster, Node
from provisioner.states import MAY_POSTINSTALL

# Nodes that boot their profile's image (enrolled, serving, degraded) or failed on it:
# those run the node exporter. A node in discovery has none yet.
SCRAPED_STATES = MAY_POSTINSTALL


def targets(
    nodes: Iterable[Node],
    clusters: Sequence[Cluster],
    *,
    appliance: str,
    node_exporter_port: int,
) -> list[dict[str, Any]]:
    """The target groups (``appliance``: this node's ``host:port`` of its /metrics)."""
    roles: dict[str, tuple[str, str]] = {}
    for c in clusters:
        roles.setdefault(c.head, (c.name, "head"))
        for worker in c.workers:
            roles.setdefault(worker, (c.name, "worker"))
    groups: list[dict[str, Any]] = [
        {"targets": [appliance], "labels": {"node": "provisioner", "role": "appliance"}}
    ]
    for node in sorted(nodes, key=lambda n: n.hostname or n.mac):
        if node.state not in SCRAPED_STATES or not node.ip:
            continue
        name = node.hostname or node.mac
        cluster, role = roles.get(name, ("", ""))
        labels = {
            "node": name,
            "mac": node.mac,
            "profile": node.profile or "",
            "state": node.state.value,
            "cluster": cluster,
            "role": role,
        }
        groups.append({"targets": [f"{node.ip}:{node_exporter_port}"], "labels": labels})
    return groups
