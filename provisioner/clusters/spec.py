"""A cluster's spec: which nodes serve which model with which engine (pure).

``provisioner cluster create v100s --engine llama-rpc --model M --head node0 --workers
node1,node2 [--rpc-network ib0]`` records one :class:`Cluster`; post-install renders its
units from it (the head's ``--rpc`` list is made from the workers' addresses, nobody types
one) and smoke checks it. Validation is pure: the members, their profiles and the engine
in, the reasons it cannot be made out. What each engine adds is in
:mod:`provisioner.clusters.engines`; the registry side in :mod:`.store`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from provisioner.errors import ProvisionerError
from provisioner.profiles import Engine, Profile
from provisioner.records import Node

RPC_PORT = 50052
HTTP_PORT = 8080
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")


class ClusterError(ProvisionerError):
    """A cluster that cannot be made (or found): names the member or rule at fault."""


@dataclass(frozen=True)
class Served:
    """One model a vLLM head serves: its unit, port and share of the accelerator memory.

    ``name`` is the served model name clients ask for (``--served-model-name``), ``model``
    the model store's name, ``share`` ``--gpu-memory-utilization`` (the shares of one node
    add up to less than 1.0)."""

    name: str
    model: str
    share: float | None
    port: int


@dataclass(frozen=True)
class Cluster:
    name: str
    engine: Engine
    model: str
    head: str  # hostname
    workers: tuple[str, ...] = ()
    rpc_network: str | None = None  # interface whose addresses the RPC traffic uses
    rpc_port: int = RPC_PORT
    http_port: int = HTTP_PORT
    options: Mapping[str, str] = field(default_factory=dict)
    # vLLM: the models the head serves (one unit and port each); empty for llama-rpc.
    serve: tuple[Served, ...] = ()
    tensor_parallel: int | None = None  # vLLM: GPUs one copy spans within a node
    pipeline_parallel: int | None = None  # vLLM: stages across nodes (Ray)
    gateway: bool = False  # an OpenAI route on the control node over every served model

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine", Engine(self.engine))

    @property
    def members(self) -> tuple[str, ...]:
        return (self.head, *self.workers)

    def role(self, hostname: str) -> str:
        return "head" if hostname == self.head else "worker"

    def served(self) -> tuple[Served, ...]:
        """What the head serves: the ``serve`` list, or for llama-rpc its one model."""
        if self.serve:
            return self.serve
        return (Served(self.model, self.model, None, self.http_port),)

    def to_json(self) -> str:
        data = asdict(self)
        data["workers"] = list(self.workers)
        data["options"] = dict(self.options)
        data["serve"] = [asdict(s) for s in self.serve]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Cluster:
        data = json.loads(text)
        data["workers"] = tuple(data.get("workers", ()))
        data["serve"] = tuple(Served(**s) for s in data.get("serve", ()))
        return cls(**data)


def validate(
    cluster: Cluster, nodes: Mapping[str, Node | None], profiles: Mapping[str, Profile | None]
) -> list[str]:
    """Why ``cluster`` cannot be made (empty: it can). ``nodes``/``profiles`` by hostname."""
    problems = []
    if not _NAME.match(cluster.name):
        problems.append(f"cluster name {cluster.name!r}: lower-case letters, digits, '-'")
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


def split(text: str | None) -> Sequence[str]:
    return tuple(w for w in (text or "").replace(" ", ",").split(",") if w)
