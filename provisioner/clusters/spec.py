"""A cluster's spec: which nodes serve which model with which engine (pure).

``provisioner cluster create v100s --engine llama-rpc --model M --head node0 --workers
node1,node2 [--rpc-network ib0]`` records one :class:`Cluster`; post-install renders its
units from it (the head's ``--rpc`` list is made from the workers' addresses, nobody types
one) and smoke checks it. Validation is pure: the members, their profiles and the engine
in, the reasons it cannot be made out. The spec itself (:class:`Cluster`, :class:`Served`)
is a record in :mod:`provisioner.records`, so that the post-install plans can take it
without importing this package. What each engine adds is in
:mod:`provisioner.clusters.engines`; the registry side in :mod:`.store`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from provisioner import names
from provisioner.errors import ProvisionerError
from provisioner.profiles import Profile
from provisioner.records import Cluster, Node


class ClusterError(ProvisionerError):
    """A cluster that cannot be made (or found): names the member or rule at fault."""


def validate(
    cluster: Cluster, nodes: Mapping[str, Node | None], profiles: Mapping[str, Profile | None]
) -> list[str]:
    """Why ``cluster`` cannot be made (empty: it can). ``nodes``/``profiles`` by hostname."""
    problems = names_problems(cluster)
    if len(set(cluster.members)) != len(cluster.members):
        problems.append("a node is listed twice (head and workers must differ)")
    for member in cluster.members:
        node = nodes.get(member)
        if node is None:
            problems.append(f"{member}: no such node")
            continue
        profile = profiles.get(member)
        if node.profile is None or profile is None:
            problems.append(f"{member}: no profile yet (state {node.state.value})")
            continue
        refusal = profile.refuses(cluster.engine)
        if refusal is not None:
            reason, instead = refusal
            hint = f"; use --engine {instead.value}" if instead else ""
            problems.append(
                f"{member}: {cluster.engine.value} does not run on {profile.name}: {reason}{hint}"
            )
    return problems


def names_problems(cluster: Cluster) -> list[str]:
    """Every name and option of ``cluster`` held to :mod:`provisioner.names` (they reach
    unit files, their paths and command lines on the members)."""

    def problem(check: Callable[..., object], *values: object) -> str | None:
        try:
            check(*values)
        except names.UnsafeValue as exc:
            return str(exc)
        return None

    found = [
        problem(names.check_cluster, cluster.name),
        problem(names.check_model, cluster.model),
        *(problem(names.check_hostname, m) for m in cluster.members),
        *(problem(names.check_option, k, v) for k, v in cluster.options.items()),
        *(problem(names.check_served, s.name) for s in cluster.serve),
        *(problem(names.check_model, s.model) for s in cluster.serve),
    ]
    if cluster.rpc_network is not None:
        found.append(problem(names.check_interface, cluster.rpc_network))
    return [p for p in found if p is not None]


def split(text: str | None) -> Sequence[str]:
    return tuple(w for w in (text or "").replace(" ", ",").split(",") if w)
