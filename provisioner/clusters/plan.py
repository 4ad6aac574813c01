"""A cluster's post-install plan, assembled from the registry, the profiles and the
stores: every member must be booted on its image with an address; the engine adds its
artifact, model and units (:func:`provisioner.postinstall.plan.plan` renders them).

``postinstall run`` takes :func:`postinstall_plan`: the members checked, then every artifact
the engine needs put in the store (the missing ones built, :mod:`.engines.artifacts`), then
the plan; no node is contacted until it returns. ``--dry-run`` takes :func:`cluster_plan`,
which builds nothing.
"""

from __future__ import annotations

from provisioner.artifacts.store import ArtifactStore
from provisioner.clusters.engines import engine_for
from provisioner.clusters.engines.artifacts import Builder, Progress, ensure
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError
from provisioner.clusters.store import members
from provisioner.postinstall.plan import NodePlan
from provisioner.records import Cluster, Node
from provisioner.states import MAY_POSTINSTALL


def ready_members(site: Site, cluster: Cluster) -> list[Node]:
    """The members, each booted on its image with an address (else ClusterError)."""
    nodes = members(site.registry, cluster)
    problems = []
    for node in nodes:
        if node.state not in MAY_POSTINSTALL:
            problems.append(f"{node.hostname}: {node.state.value}, not booted on its image yet")
        elif not node.ip:
            problems.append(f"{node.hostname}: no address known")
    if problems:
        raise ClusterError(f"{cluster.name}: " + "; ".join(problems))
    return nodes


def cluster_plan(site: Site, cluster: Cluster) -> list[NodePlan]:
    nodes = ready_members(site, cluster)
    return engine_for(cluster).plan(site, cluster, [site.member(n) for n in nodes])


def postinstall_plan(
    site: Site,
    cluster: Cluster,
    *,
    build: bool,
    progress: Progress,
    builder: Builder | None = None,
) -> list[NodePlan]:
    """:func:`cluster_plan` once the artifacts it reads are in the store: the missing ones
    built (``build``) or refused with the command that builds them (ClusterError). A failed
    build raises before any plan exists, so no node is touched."""
    nodes = ready_members(site, cluster)
    engine = engine_for(cluster)
    ensure(
        engine.needs(site, cluster), ArtifactStore(site.artifacts_dir),
        build=build, progress=progress, builder=builder,
    )  # fmt: skip
    return engine.plan(site, cluster, [site.member(n) for n in nodes])
