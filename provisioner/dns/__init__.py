"""DNS for the cluster zone: :mod:`.zone` (pure: the zone and one answer), :mod:`.server`
(asyncio UDP and TCP), and :func:`registry_zone`, the zone made from the registry."""

from __future__ import annotations

import time

from provisioner.clusters import store
from provisioner.config import Config
from provisioner.dns.zone import Zone, build_zone
from provisioner.registry import Registry


def registry_zone(cfg: Config, registry: Registry) -> Zone:
    """The zone now: every node with a hostname and an address, each cluster's head under
    the cluster's name, the appliance as ``provisioner`` and ``gateway``."""
    nodes = [(n.hostname, n.ip) for n in registry.nodes() if n.hostname and n.ip]
    clusters = [(c.name, c.head) for c in store.load_all(registry)]
    return build_zone(
        cfg.dns.zone,
        cfg.network.server_ip,
        cfg.network.subnet,
        nodes,
        clusters,
        serial=int(time.time()) & 0xFFFFFFFF,
        ttl=cfg.dns.ttl,
    )
