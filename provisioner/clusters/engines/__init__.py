"""The inference engines a cluster can run, one module each behind
:class:`~provisioner.clusters.engines.base.ClusterEngine`.

A third engine is one module here (a class with the protocol's methods), its recipes in
``postinstall/`` and one line in :data:`ENGINES`; ``docs/architecture.md`` says how.
"""

from __future__ import annotations

from provisioner.clusters.engines.base import ClusterEngine
from provisioner.clusters.engines.llama_rpc import LlamaRpcEngine
from provisioner.clusters.engines.vllm import VllmEngine
from provisioner.clusters.spec import ClusterError
from provisioner.profiles import Engine
from provisioner.records import Cluster

ENGINES: dict[Engine, ClusterEngine] = {
    Engine.LLAMA_RPC: LlamaRpcEngine(),
    Engine.VLLM: VllmEngine(),
}


def engine_for(cluster_or_kind: Cluster | Engine | str) -> ClusterEngine:
    """The engine a cluster runs (or of that name); ClusterError naming the ones there are."""
    kind = cluster_or_kind.engine if isinstance(cluster_or_kind, Cluster) else cluster_or_kind
    try:
        return ENGINES[Engine(kind)]
    except (ValueError, KeyError):
        have = ", ".join(e.value for e in ENGINES)
        raise ClusterError(f"engine {kind}: its post-install recipe is not written yet "
                           f"(available: {have})") from None  # fmt: skip


def engine_names() -> list[str]:
    return [e.value for e in ENGINES]
