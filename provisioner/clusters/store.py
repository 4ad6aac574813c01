"""Clusters in the registry: load one by name, find its members' nodes."""

from __future__ import annotations

from provisioner.clusters.spec import ClusterError
from provisioner.records import Cluster, Node
from provisioner.registry import Registry


def load(registry: Registry, name: str) -> Cluster:
    spec = registry.cluster_spec(name)
    if spec is None:
        have = ", ".join(registry.cluster_names()) or "none yet: provisioner cluster create"
        raise ClusterError(f"no cluster {name!r} (have: {have})")
    return Cluster.from_json(spec)


def load_all(registry: Registry) -> list[Cluster]:
    return [load(registry, name) for name in registry.cluster_names()]


def members(registry: Registry, cluster: Cluster) -> list[Node]:
    """The members' nodes, head first."""
    found = []
    for hostname in cluster.members:
        node = registry.node(hostname)
        if node is None:
            raise ClusterError(f"{cluster.name}: member {hostname} is not in the registry")
        found.append(node)
    return found
