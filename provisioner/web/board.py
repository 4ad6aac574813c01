"""The dashboard's node table: one row per node, kept current from the registry cheaply.

:class:`Board` reads a registry connection of its own (read-only: the boot path's lock
is never held for it) and answers :meth:`Board.refresh` with the rows that changed since
the last call. It reads nothing when nothing was committed (``PRAGMA data_version``
moves only when another connection commits: ``serve``'s own writes, or a command's);
when something was, it reads the events and steps recorded after the last ones it saw
and one narrow row a node (its columns, power URL, inventory time), and rebuilds only the
rows of nodes that changed. So a thousand browsers cost one query loop, a quiet appliance
one pragma a second, and a boot storm of 10,000 nodes tens of milliseconds a second.

A row: name, MAC, state, profile, accelerators (named from the node's inventory by the
fingerprinting tables, computed again only when a new inventory arrives), IP, the last
thing that happened to it (a boot step, a post-install or smoke step; ``failed`` when
that went wrong), and its power driver with the last power operation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from provisioner.discovery.accelerators import accelerators
from provisioner.discovery.schema import inventory_of
from provisioner.errors import ProvisionerError, RegistryError
from provisioner.power.settings import parse_power_url
from provisioner.registry import Registry

log = logging.getLogger(__name__)

FAILED_STATES = frozenset({"failed", "unmatched"})


@dataclass(frozen=True)
class NodeRow:
    mac: str
    name: str
    state: str
    profile: str
    accelerators: str
    ip: str
    last: str  # the last step: "ready", "postinstall:driver failed", "power cycle"
    last_ts: float
    failed: bool  # its state or its last step failed
    power: str  # "ipmi (cycle ok)", "redfish", "-"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Change:
    """What the feed sends a browser: a row new or changed, or a node forgotten."""

    kind: str  # "node" | "gone"
    mac: str
    row: NodeRow | None = None

    def data(self) -> dict[str, Any]:
        return self.row.as_dict() if self.row else {"mac": self.mac}


def event_label(kind: str, detail: Mapping[str, Any]) -> tuple[str, bool]:
    """A timeline event in a few words, and whether it tells of a failure."""
    if kind == "state":
        to = str(detail.get("to", "?"))
        return f"state {to}", to in FAILED_STATES
    if kind == "http-file":
        name = str(detail.get("file", "")).rsplit("/", 1)[-1].split("?")[0]
        return f"fetched {name}", False
    if kind == "power":
        ok = bool(detail.get("ok", True))
        return f"power {detail.get('op', '?')}{'' if ok else ' failed'}", not ok
    if kind in ("refused", "watch"):
        return kind, True
    if kind == "integrity":
        ok = bool(detail.get("ok", True))
        return ("root checked" if ok else "root check failed"), not ok
    return kind, False


def power_label(url: str | None, op: str | None, ok: bool | None) -> str:
    if url is None:
        return "-"
    try:
        driver = parse_power_url(url).driver.value
    except ProvisionerError:
        driver = "invalid"
    if op is None:
        return driver
    return f"{driver} ({op} {'ok' if ok else 'failed'})"


def accelerator_label(document: str | None) -> str:
    """ "nvidia-ampere x2, intel-arc x1" from an inventory document; "-" without one."""
    inventory = inventory_of(document) if document else None
    if inventory is None:
        return "-"
    found = accelerators(inventory)
    return ", ".join(f"{a.slug} x{a.count}" for a in found) or "-"


@dataclass
class _Last:
    label: str = "-"
    ts: float = 0.0
    failed: bool = False


class Board:
    """The node table, refreshed from a read-only registry connection (see the module)."""

    def __init__(self, registry_path: Path | str, *, label_accelerators: Callable[[str | None], str]
                 = accelerator_label):  # fmt: skip
        self.path = registry_path
        self._label_accelerators = label_accelerators
        self._registry: Registry | None = None
        self._version: object = None
        self._event_id = 0
        self._step_id = 0
        self._last_event: dict[str, _Last] = {}
        self._last_step: dict[str, _Last] = {}
        self._power_op: dict[str, tuple[str, bool]] = {}
        self._accel: dict[str, tuple[float, str]] = {}  # mac -> (inventory received, label)
        self.rows: dict[str, NodeRow] = {}
        self._facts: dict[str, tuple[Any, ...]] = {}  # each node's columns, as last read

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def refresh(self) -> list[Change]:
        """Read what changed since the last call; the rows that changed."""
        if self._registry is None:
            if isinstance(self.path, Path) and not self.path.exists():
                return []
            self._registry = Registry(self.path, readonly=True)
        reg = self._registry
        try:
            # SQLite: a counter; PostgreSQL: the WAL position (registry_pg.py). Compared only.
            version = reg.query("PRAGMA data_version")[0]["data_version"]
            if version == self._version and self._facts:
                return []
            self._version = version
            return self._read(reg)
        except RegistryError as exc:  # a busy or damaged file: try again next time
            log.warning("dashboard: reading the registry failed: %s", exc)
            self._version = None
            return []

    def _read(self, reg: Registry) -> list[Change]:
        """Rebuild only the rows of nodes with new events or steps, or whose own columns,
        power settings or inventory changed; the rest stay as they were."""
        dirty: set[str] = set()
        last_events: dict[str, dict[str, Any]] = {}  # each node's newest new event
        for e in reg.query("SELECT id, mac, ts, kind, detail FROM events WHERE id > ? ORDER BY id",
                           (self._event_id,)):  # fmt: skip
            self._event_id = e["id"]
            last_events[e["mac"]] = e
            if e["kind"] == "power":
                detail = json.loads(e["detail"])
                if detail.get("op") not in (None, "status"):
                    self._power_op[e["mac"]] = (str(detail["op"]), bool(detail.get("ok", True)))
        for mac, e in last_events.items():  # only these are parsed: a storm is mostly DHCP
            label, failed = event_label(e["kind"], json.loads(e["detail"]))
            self._last_event[mac] = _Last(label, e["ts"], failed)
        dirty.update(last_events)
        for s in reg.query("SELECT id, mac, ts, step, status FROM steps WHERE id > ? ORDER BY id",
                           (self._step_id,)):  # fmt: skip
            self._step_id = s["id"]
            # post-install: unchanged | changed | failed; smoke: ok | failed
            failed = s["status"] == "failed"
            self._last_step[s["mac"]] = _Last(f"{s['step']} {s['status']}", s["ts"], failed)
            dirty.add(s["mac"])
        facts = {
            r["mac"]: (r["hostname"], r["state"], r["profile"], r["ip"], r["url"], r["received"])
            for r in reg.query(
                "SELECT n.mac, n.hostname, n.state, n.profile, n.ip, p.url, i.received"
                " FROM nodes n LEFT JOIN power p ON p.mac = n.mac"
                " LEFT JOIN inventories i ON i.mac = n.mac"
            )
        }
        changes = []
        for mac, fact in facts.items():
            if mac in dirty or self._facts.get(mac) != fact:
                row = self._row(reg, mac, fact)
                if self.rows.get(mac) != row:
                    self.rows[mac] = row
                    changes.append(Change("node", mac, row))
        for mac in [m for m in self.rows if m not in facts]:
            del self.rows[mac]
            for table in (self._last_event, self._last_step, self._power_op, self._accel):
                table.pop(mac, None)
            changes.append(Change("gone", mac))
        self._facts = facts
        return changes

    def _row(self, reg: Registry, mac: str, fact: tuple[Any, ...]) -> NodeRow:
        hostname, state, profile, ip, url, received = fact
        last = max(self._last_event.get(mac, _Last()), self._last_step.get(mac, _Last()),
                   key=lambda x: x.ts)  # fmt: skip
        op = self._power_op.get(mac)
        return NodeRow(
            mac=mac,
            name=hostname or mac,
            state=state,
            profile=profile or "-",
            accelerators=self._accelerators(reg, mac, received),
            ip=ip or "-",
            last=last.label,
            last_ts=last.ts,
            failed=state in FAILED_STATES or last.failed,
            power=power_label(url, op[0] if op else None, op[1] if op else None),
        )

    def _accelerators(self, reg: Registry, mac: str, received: float | None) -> str:
        if received is None:
            return "-"
        cached = self._accel.get(mac)
        if cached is not None and cached[0] == received:
            return cached[1]
        try:
            label = self._label_accelerators(reg.inventory_document(mac))
        except ProvisionerError as exc:  # a table or pci.ids problem: say so, keep going
            label = f"? ({exc})"
        self._accel[mac] = (received, label)
        return label
