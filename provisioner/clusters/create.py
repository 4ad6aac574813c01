"""``cluster create``: a spec checked against the registry, the profiles and the model
store, then recorded; ClusterError names every reason it is refused."""

from __future__ import annotations

from provisioner.clusters.engines import engine_for
from provisioner.clusters.site import Site
from provisioner.clusters.spec import ClusterError, validate
from provisioner.errors import ModelError
from provisioner.models.store import ModelStore
from provisioner.records import Cluster


def create(site: Site, cluster: Cluster) -> tuple[Cluster, list[str]]:
    """Record ``cluster`` (its engine's defaults filled in): (the cluster, warnings)."""
    engine = engine_for(cluster)
    cluster = engine.complete(cluster)
    registry = site.registry
    nodes = {m: registry.node(m) for m in cluster.members}
    by_member = {
        m: site.profiles.get(n.profile) if n is not None and n.profile else None
        for m, n in nodes.items()
    }
    problems = validate(cluster, nodes, by_member)
    store = ModelStore(site.models_dir)
    kinds: dict[str, str | None] = {}
    for served in cluster.served():
        try:
            kinds[served.model] = store.get(served.model).kind.value
        except ModelError:
            kinds[served.model] = None
    problems += engine.check_models(cluster, kinds)
    warnings: list[str] = []
    if not problems:
        more, warnings = engine.check(site, cluster, kinds)
        problems += more
    if problems:
        raise ClusterError(f"cluster {cluster.name} refused: " + "; ".join(problems))
    registry.save_cluster(cluster.name, cluster.to_json())
    return cluster, warnings
