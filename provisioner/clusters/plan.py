"""A cluster's post-install plan, assembled from the registry, the profiles and the
stores: every member must be booted on its image with an address; the engine adds its
artifact, model and units (:func:`provisioner.postinstall.plan.plan` renders them)."""

from __future__ import annotations

from provisioner.clusters.engines import engine_for
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError
from provisioner.clusters.store import members
from provisioner.postinstall.plan import NodePlan
from provisioner.records import Cluster
from provisioner.states import MAY_POSTINSTALL


def cluster_plan(site: Site, cluster: Cluster) -> list[NodePlan]:
    nodes = members(site.registry, cluster)
    problems = []
    for node in nodes:
        if node.state not in MAY_POSTINSTALL:
            problems.append(f"{node.hostname}: {node.state.value}, not booted on its image yet")
        elif not node.ip:
            problems.append(f"{node.hostname}: no address known")
    if problems:
        raise ClusterError(f"{cluster.name}: " + "; ".join(problems))
    return engine_for(cluster).plan(site, cluster, [site.member(n) for n in nodes])
