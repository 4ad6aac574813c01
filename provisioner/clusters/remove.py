"""``cluster remove``: on every member that answers, what its engine's recipes name under
``teardown:`` (units stopped and removed, firewall tables deleted); then the cluster is
forgotten and its nodes go back to enrolled."""

from __future__ import annotations

from collections.abc import Callable

from provisioner.clusters import keys
from provisioner.clusters.engines import engine_for
from provisioner.clusters.engines.base import teardowns
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError
from provisioner.clusters.store import members
from provisioner.records import Cluster
from provisioner.states import NodeEvent


def remove(
    site: Site, cluster: Cluster, *, force: bool, progress: Callable[[str], None]
) -> list[str]:
    """Tear the cluster down and forget it: the members that did not answer (with
    ``force``; without it, any such member refuses the removal and nothing is forgotten)."""
    engine = engine_for(cluster)
    plans = teardowns(engine, cluster)
    problems = []
    for node in members(site.registry, cluster):
        hostname = node.hostname or node.mac
        undo = plans[hostname]
        try:
            conn = site.connect(node)
            try:
                conn.run(undo.shell(), timeout=120)
            finally:
                conn.close()
        except Exception as exc:  # a member that is down keeps nothing running anyway
            problems.append(f"{hostname}: {exc}")
            if not force:
                continue
        site.registry.transition(
            node.mac, NodeEvent.RELEASE, reason=f"cluster {cluster.name} removed"
        )
        progress(f"{hostname}: removed {', '.join(undo.units)}")
    if problems and not force:
        raise ClusterError(
            f"{cluster.name}: not removed, some members did not answer ({'; '.join(problems)});"
            " --force forgets it anyway"
        )
    site.registry.delete_cluster(cluster.name)
    engine.forget(site, cluster)
    keys.forget(site.cfg.state_dir, cluster.name)
    return problems
