"""The registry's records: a node, an event on its timeline, a lease.

Plain frozen values with no I/O, so that the pure cores (boot policy, plans, the
timeline) can take and return them without importing the registry (and sqlite3).
:mod:`provisioner.registry` stores and loads them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address

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
    KEYS = "keys"  # the booted image fetched the control node's SSH key
    INVENTORY = "inventory"  # the agent reported the hardware
    STATE = "state"  # the node changed state
    PROFILE = "profile"  # fingerprinting gave (or took away) a profile
    REFUSED = "refused"  # a request from or about the node was refused


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


@dataclass(frozen=True)
class Lease:
    ip: IPv4Address
    mac: str
    expires: float
    kind: LeaseKind
