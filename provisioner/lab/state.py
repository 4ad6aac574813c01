"""What `lab up` started, kept in the lab directory's ``lab.json`` for `status`, `reboot`
and `down` (which end those processes by PID, and nothing else)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from provisioner.lab.segment import DEFAULT_SUBNET, Segment
from provisioner.lab.vm import VmSpec


@dataclass
class LabNode:
    name: str
    mac: str
    firmware: str
    tap: str
    pid: int | None = None
    powered_on: float | None = None


@dataclass
class LabState:
    prefix: str
    mode: str
    directory: str
    started: float
    accel: str
    memory_mib: int
    pids: dict[str, int] = field(default_factory=dict)
    nodes: list[LabNode] = field(default_factory=list)
    image: str | None = None  # nodes are enrolled and boot this image (None: discovery only)
    kind: str = "vm"  # vm (QEMU, real firmware) | container (systemd-nspawn, the image only)
    containers: list[dict[str, Any]] = field(default_factory=list)  # containers.Started
    host_leg: str | None = None  # this machine's link on the lab's bridge (None: none)
    disks: dict[str, str] = field(default_factory=dict)  # container node -> its loop device
    profiles: str | None = None  # the profiles folder nodes are fingerprinted against
    netem: str | None = None  # faults on the bridge (netem's words; None: none)
    netem_way: str | None = None  # how they were put there: tc | queue (lab/netem.py)
    subnet: str = DEFAULT_SUBNET  # the lab's segment (lab/segment.py)
    first_node: int = 1  # its nodes' numbers start here (names, MACs)
    registry_url: str | None = None  # a shared PostgreSQL registry (None: the SQLite file)

    @property
    def target(self) -> str:
        """The verdict a healthy node ends at: ``discovered``, or ``ready`` on its image."""
        return "ready" if self.image or self.kind == "container" else "discovered"

    @property
    def segment(self) -> Segment:
        return Segment.parse(self.subnet)

    @property
    def registry(self) -> Path | str:
        """What :class:`~provisioner.registry.Registry` opens for this lab."""
        return self.registry_url or self.state_dir / "registry.sqlite3"

    @property
    def config(self) -> Path:
        return Path(self.directory) / "provisioner.toml"

    @property
    def state_dir(self) -> Path:
        return Path(self.directory) / "state"

    def vm(self, node: LabNode) -> VmSpec:
        return VmSpec(
            node.name,
            node.mac,
            node.firmware,
            node.tap,
            Path(self.directory) / "vms",
            self.memory_mib,
            self.accel,
            powered_off=True,  # `lab up` powers it on through the qemu driver (enroll)
        )

    def save(self) -> None:
        path = Path(self.directory) / "lab.json"
        path.write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> LabState | None:
        path = directory / "lab.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["nodes"] = [LabNode(**n) for n in data["nodes"]]
        return cls(**data)
