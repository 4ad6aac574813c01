"""The replica table (pure): every served model name, and the clusters that serve it.

A *replica* is one cluster's server for one served name: its head's address and port,
the head's state in the registry, and the decode tokens/s its last smoke measured (the
balancer's weight). Two clusters that serve the same name (``--serve NAME=MODEL``, or the
same ``--model``) are two replicas of it; ``GET /v1/models`` lists each name once.

Only a cluster whose head is ``serving`` takes traffic, ``degraded`` ones when no serving
replica is up (:data:`TIERS`); any other state (enrolled after a reboot, failed, ...)
drains the replica. A cluster made with ``--no-front-door`` is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from provisioner.records import Cluster, Node
from provisioner.states import NodeState

# The order replicas are tried in, by their head's state; a state not here takes nothing.
TIERS: Mapping[NodeState, int] = {NodeState.SERVING: 0, NodeState.DEGRADED: 1}


def base_url(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class Replica:
    model: str  # the served name clients ask for
    cluster: str
    head: str  # the head's hostname
    url: str | None  # the server's base URL (None: the head has no address)
    state: NodeState | None  # the head's state (None: the head is not in the registry)
    decode_tps: float | None = None  # the last smoke's decode tokens/s
    engine_key: str | None = field(default=None, repr=False)  # what the server requires

    @property
    def id(self) -> str:
        """``cluster/model``: one replica's name in metrics, status and logs."""
        return f"{self.cluster}/{self.model}"

    @property
    def tier(self) -> int | None:
        """The order it is tried in (lower first); None: it takes no traffic."""
        if self.url is None or self.state is None:
            return None
        return TIERS.get(self.state)


@dataclass(frozen=True)
class Table:
    """Served name -> its replicas (in cluster name order)."""

    replicas: Mapping[str, tuple[Replica, ...]]

    def names(self) -> list[str]:
        return sorted(self.replicas)

    def of(self, model: str) -> tuple[Replica, ...]:
        return self.replicas.get(model, ())

    def all(self) -> list[Replica]:
        return [r for name in self.names() for r in self.replicas[name]]


def table(
    clusters: Iterable[Cluster],
    heads: Mapping[str, Node],
    decode_tps: Mapping[str, float],
    engine_keys: Mapping[str, str] | None = None,
) -> Table:
    """The table from the clusters, their heads' nodes (by hostname), the last smoke's
    decode tokens/s (by cluster name) and the engine keys (by cluster name)."""
    found: dict[str, list[Replica]] = {}
    for cluster in sorted(clusters, key=lambda c: c.name):
        if not cluster.front_door:
            continue
        head = heads.get(cluster.head)
        for served in cluster.served():
            found.setdefault(served.name, []).append(
                Replica(
                    model=served.name,
                    cluster=cluster.name,
                    head=cluster.head,
                    url=base_url(head.ip, served.port) if head is not None and head.ip else None,
                    state=head.state if head is not None else None,
                    decode_tps=decode_tps.get(cluster.name),
                    engine_key=(engine_keys or {}).get(cluster.name),
                )
            )
    return Table({name: tuple(replicas) for name, replicas in found.items()})


def model_list(names: Iterable[str], now: int) -> dict[str, object]:
    """``GET /v1/models``: each served name once."""
    data = [{"id": n, "object": "model", "created": now, "owned_by": "provisioner"} for n in names]
    return {"object": "list", "data": data}
