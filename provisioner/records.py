"""The registry's records: a node, an event on its timeline, a lease, a cluster's spec.

Plain frozen values with no I/O, so that the pure cores (boot policy, plans, the
timeline) can take and return them without importing the registry (and sqlite3).
:mod:`provisioner.registry` stores and loads them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address

from provisioner.profiles import Engine
from provisioner.states import NodeState

Detail = Mapping[str, str | int | float | bool | None]


class EventKind(StrEnum):
    """Steps of a node's boot timeline, in the order a healthy boot shows them."""

    POWER = "power"  # a power driver acted on the node (on, off, cycle, boot-network)
    DHCP = "dhcp"  # a DHCP/PXE request from the node
    DHCP_REPLY = "dhcp-reply"  # our answer: address and/or boot file
    TFTP = "tftp"  # a file sent over TFTP
    SCRIPT = "script"  # its iPXE boot script served
    HTTP_FILE = "http-file"  # kernel, initrd or root image fetched over HTTP
    INTEGRITY = "integrity"  # the root it booted checked against the published sha256
    KEYS = "keys"  # the booted image fetched the control node's SSH key
    INVENTORY = "inventory"  # the agent reported the hardware
    STATE = "state"  # the node changed state
    PROFILE = "profile"  # fingerprinting gave (or took away) a profile
    REFUSED = "refused"  # a request from or about the node was refused
    APPROVAL = "approval"  # a report held for `node approve` (keys, profile, address), or approved
    CONVERGE = "converge"  # its cluster brought back after a reboot (clusters/converge.py)
    RECOVER = "recover"  # an engine's recovery step on it (a worker back, the head restarted)
    WATCH = "watch"  # the watchdog found one of its units down (clusters/watchdog.py)
    ROLL = "roll"  # a rolling image upgrade rebooted it, saw it back, or stopped on it
    DISK = "disk"  # `node disk init`: its cache disk formatted, mounted, or refused
    CONSOLE = "console"  # its kernel's first lines of a boot, or a panic/Oops (console/watch.py)


class LeaseKind(StrEnum):
    OFFERED = "offered"
    BOUND = "bound"
    DECLINED = "declined"


@dataclass(frozen=True)
class Node:
    mac: str
    hostname: str | None
    state: NodeState
    profile: str | None
    ip: str | None
    firmware: str | None
    arch: int | None
    first_seen: float
    last_seen: float
    image: str | None = None  # name@version that its last boot script named

    def as_dict(self) -> dict[str, str | float | int | None]:
        return {
            "image": self.image,
            "mac": self.mac,
            "hostname": self.hostname,
            "state": self.state.value,
            "profile": self.profile,
            "ip": self.ip,
            "firmware": self.firmware,
            "arch": self.arch,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
        }


@dataclass(frozen=True, slots=True)
class Sighting:
    """A node seen on the network (a DHCP request): what ``Registry.seen_many`` records.
    ``firmware_is_guess``: fill the firmware in only if none is known yet."""

    mac: str
    now: float
    firmware: str | None = None
    arch: int | None = None
    firmware_is_guess: bool = False
    dhcp_ip: str | None = None


@dataclass(frozen=True)
class Event:
    mac: str
    ts: float
    kind: EventKind
    detail: Detail

    def as_dict(self) -> dict[str, object]:
        return {"ts": self.ts, "kind": self.kind.value, "detail": dict(self.detail)}

    @classmethod
    def from_dict(cls, mac: str, data: Mapping[str, object]) -> Event:
        detail = data.get("detail")
        ts = data.get("ts")
        return cls(
            mac,
            float(ts) if isinstance(ts, (int, float)) else 0.0,
            EventKind(str(data.get("kind"))),
            detail if isinstance(detail, Mapping) else {},
        )


class TokenCheck(StrEnum):
    """What the registry found of a boot token presented with a request."""

    OK = "ok"
    UNKNOWN = "no valid boot token"  # none, another node's, or replaced by a newer boot
    EXPIRED = "boot token expired"
    ELSEWHERE = "boot token used from another address"
    SPENT = "boot token already used for an inventory"


@dataclass(frozen=True)
class BootToken:
    """A node's live boot token as the registry keeps it: never the token, only who may
    use it. ``bound_to`` None: whoever uses it first (then that address only)."""

    mac: str
    asked_by: str  # the address that fetched the script
    bound_to: str | None
    issued: float
    expires: float
    spent: float | None  # when its one inventory POST came

    def live(self, now: float) -> bool:
        return now < self.expires


@dataclass(frozen=True)
class PendingInventory:
    """A report held for ``node approve``: the document as the POST would have stored it,
    the address it came from (proxy mode) and what it would change."""

    mac: str
    received: float
    data: str
    ip: str | None
    changes: Detail


@dataclass(frozen=True)
class Lease:
    ip: IPv4Address
    mac: str
    expires: float
    kind: LeaseKind


RPC_PORT = 50052  # llama.cpp's RPC servers
HTTP_PORT = 8080  # llama-server on the head


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
    converge: bool = True  # brought back to serving by the control node after a reboot
    front_door: bool = True  # its served models are replicas behind the gateway's /v1

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
