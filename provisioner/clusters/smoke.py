"""``smoke CLUSTER``: one SSH connection per member, the engine's checks, and the verdict
recorded: each check a step of every member, every member moved to serving, degraded
(only floors missed) or failed."""

from __future__ import annotations

import json
import time

from provisioner.clusters import keys
from provisioner.clusters.engines import engine_for
from provisioner.clusters.engines.base import Progress, SmokeOptions, SmokeTarget
from provisioner.clusters.site import Site
from provisioner.clusters.store import members
from provisioner.postinstall.ssh import Connection
from provisioner.records import Cluster
from provisioner.smoke.report import Report
from provisioner.smoke.run import Floors
from provisioner.smoke.verdict import verdict


def floors_for(site: Site, cluster: Cluster) -> Floors:
    """The bounds the head's profile sets (``smoke:`` in its YAML)."""
    head = site.registry.node(cluster.head)
    profile = site.profiles.get(head.profile or "") if head else None
    return Floors.from_profile(profile.smoke) if profile else Floors()


def smoke(
    site: Site, cluster: Cluster, options: SmokeOptions, floors: Floors, progress: Progress
) -> Report:
    """Run the engine's checks and record the verdict on every member."""
    nodes = {n.hostname or n.mac: n for n in members(site.registry, cluster)}
    conns: dict[str, Connection] = {}
    try:
        for hostname, node in nodes.items():
            conns[hostname] = site.connect(node)
        key = keys.secret(site.cfg.state_dir, cluster.name, "engine")
        target = SmokeTarget(cluster, nodes, conns, floors, key)
        report = engine_for(cluster).smoke(site, target, options, progress)
    finally:
        for conn in conns.values():
            conn.close()
    run_id = f"smoke-{int(time.time())}"
    event, reason = verdict(report)
    for node in nodes.values():
        for check in report.checks:
            site.registry.add_step(run_id, node.mac, f"smoke:{check.name}",
                                   "ok" if check.passed else "failed", None,
                                   json.dumps(check.to_json()), 0.0)  # fmt: skip
        site.registry.transition(node.mac, event, reason=reason)
    return report
