"""A three-node llama.cpp cluster in a real registry, and a clock a test moves by hand:
what the day-two tests (convergence, watchdog) start from."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from provisioner.records import Cluster
from provisioner.registry import Registry
from provisioner.states import NodeEvent


class Clock:
    """A monotonic clock that moves only when the test sets ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cluster_registry(
    path: Path, nodes: Mapping[str, str], cluster: Cluster, *, serving: bool = False
) -> Registry:
    """A registry at ``path`` with ``nodes`` (hostname -> MAC) enrolled on 10.30.0.100+
    (profile qemu-lab), ``serving`` too if asked, and ``cluster`` saved."""
    reg = Registry(path)
    for i, (name, mac) in enumerate(nodes.items()):
        reg.touch_node(mac, ip=f"10.30.0.{100 + i}")
        reg.set_hostname(mac, name)
        reg.store_inventory(mac, "{}")
        reg.set_profile(mac, "qemu-lab")
        reg.transition(mac, NodeEvent.MATCH)
        reg.transition(mac, NodeEvent.ENROLL)
        if serving:
            reg.transition(mac, NodeEvent.SMOKE_PASS)
    reg.save_cluster(cluster.name, cluster.to_json())
    return reg
