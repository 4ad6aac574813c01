"""A node's life by hand: find it, name it, choose what it boots, forget it.

What the operator does to one node, by ``provisioner node add|rename|boot|remove`` or by
the REST API (``PATCH`` and ``DELETE /api/v1/nodes/{key}``), in one place, so that both
doors refuse the same things the same way:

- :func:`find`: a node by MAC (any spelling) or hostname, else :class:`NodeNotFound`;
- :func:`rename`: an RFC 1123 hostname (:class:`UnsafeValue` otherwise) that no other
  node has, for a node no cluster names (clusters name their members by hostname): else
  :class:`NameTaken`;
- :func:`boot`: disk or network from its next boot, a state-machine event recorded on
  its timeline with who asked (:class:`IllegalTransition` where the table forbids it);
- :func:`remove`: forget it (its row, inventory, power settings, timeline, leases and
  tokens): it is a new node at its next boot. A cluster's member is refused.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from provisioner import names
from provisioner.config import normalize_mac
from provisioner.console.store import forget_console
from provisioner.errors import NameTaken, NodeNotFound
from provisioner.hostkeys import forget_host_key
from provisioner.records import Cluster, Node
from provisioner.registry import Registry
from provisioner.states import NodeEvent


class BootTarget(StrEnum):
    LOCAL = "local"  # its own disk, from its next boot
    NETWORK = "network"  # back to its profile's image over the network


BOOT_EVENTS = {BootTarget.LOCAL: NodeEvent.BOOT_LOCAL, BootTarget.NETWORK: NodeEvent.BOOT_NETWORK}


def find(registry: Registry, key: str) -> Node:
    """The node ``key`` names: a MAC in any spelling (``AA-BB-...``) or a hostname."""
    node = registry.node(normalize_mac(key) or key)
    if node is None:
        raise NodeNotFound(f"no node {key} in the registry (provisioner node list)")
    return node


def clusters_of(registry: Registry, node: Node) -> list[str]:
    """The clusters that name ``node`` as a member."""
    if node.hostname is None:
        return []
    found = []
    for name in registry.cluster_names():
        spec = registry.cluster_spec(name)
        if spec is not None and node.hostname in Cluster.from_json(spec).members:
            found.append(name)
    return found


def _not_in_a_cluster(registry: Registry, node: Node, what: str) -> None:
    member_of = clusters_of(registry, node)
    if member_of:
        raise NameTaken(
            f"{node.hostname}: not {what}: cluster {', '.join(member_of)} names it "
            f"(provisioner cluster remove {member_of[0]} first)"
        )


def check_name_free(registry: Registry, mac: str, hostname: str) -> str:
    """``hostname`` checked (RFC 1123) and not another node's; returns it."""
    names.check_hostname(hostname)
    holder = registry.node(hostname)
    if holder is not None and holder.mac != mac:
        raise NameTaken(f"hostname {hostname!r} is taken by {holder.mac}")
    return hostname


def rename(registry: Registry, key: str, hostname: str) -> tuple[Node, str | None]:
    """Give the node ``key`` the name ``hostname``; returns it and its former name."""
    node = find(registry, key)
    check_name_free(registry, node.mac, hostname)
    if node.hostname == hostname:
        return node, node.hostname
    _not_in_a_cluster(registry, node, "renamed")
    return registry.set_hostname(node.mac, hostname), node.hostname


def boot(registry: Registry, key: str, target: BootTarget, *, by: str) -> tuple[Node, Node]:
    """Boot the node from ``target`` from its next boot; ``by`` (``cli``, ``api``) goes on
    its timeline with the state change. Returns the node before and after."""
    node = find(registry, key)
    return node, registry.transition(node.mac, BOOT_EVENTS[target], reason=by)


def remove(registry: Registry, key: str, *, state_dir: Path | None = None) -> Node:
    """Forget the node ``key`` (not a cluster's member), and the host key and console
    lines the control node kept for it in ``state_dir``; returns it as it was."""
    node = find(registry, key)
    _not_in_a_cluster(registry, node, "removed")
    registry.forget(node.mac)
    if state_dir is not None:
        forget_host_key(state_dir, node.mac)
        forget_console(state_dir, node.mac)
    return node
