"""One hardware inventory, whatever it was parsed from (a pasted dump or the agent's report).

Every field may be unknown (None, or empty): a plain ``lspci`` knows names but no ids, a
``dmidecode`` knows no PCI devices, ``nvidia-smi`` knows only NVIDIA GPUs. ``problems`` says
what could not be parsed (skipped lines, unreadable records); ``partial`` says the dump
itself is incomplete (truncated XML/JSON, fewer records than it announces).

Ids are 4 lowercase hex digits without ``0x``; ``pci_class`` is 4 hex digits (base class and
subclass, ``"0302"`` for a 3D controller) with the programming interface apart in ``prog_if``.
The agent's :mod:`provisioner.discovery.report` keeps the 6-digit class; ``from_report``
here converts it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCHEMA = "provisioner.inventory/1"


@dataclass(frozen=True)
class PciDevice:
    address: str | None = None  # "0000:01:00.0" or "01:00.0" as the dump printed it
    vendor: str | None = None  # "10de"
    device: str | None = None  # "1b38"
    subsystem_vendor: str | None = None
    subsystem_device: str | None = None
    pci_class: str | None = None  # "0302"
    prog_if: str | None = None  # "00"
    revision: str | None = None  # "a1"
    driver: str | None = None
    numa_node: int | None = None
    vendor_name: str | None = None  # as printed by the dump (or pci.ids)
    device_name: str | None = None
    class_name: str | None = None  # "3D controller", when the dump gives only the name
    memory_bytes: int | None = None  # the device's own memory (VRAM), where the dump says

    @property
    def ids(self) -> str | None:
        if self.vendor and self.device:
            return f"{self.vendor}:{self.device}"
        return None


@dataclass(frozen=True)
class Cpu:
    vendor: str | None = None
    model_name: str | None = None
    sockets: int | None = None
    cores: int | None = None
    threads: int | None = None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Dmi:
    system_vendor: str | None = None
    system_product: str | None = None
    system_serial: str | None = None
    board_vendor: str | None = None
    board_name: str | None = None
    bios_vendor: str | None = None
    bios_version: str | None = None


@dataclass(frozen=True)
class Nic:
    name: str | None = None
    mac: str | None = None
    speed_mbps: int | None = None
    driver: str | None = None


@dataclass(frozen=True)
class Disk:
    name: str | None = None
    size_bytes: int | None = None
    rotational: bool | None = None
    model: str | None = None
    serial: str | None = None
    ids: tuple[str, ...] = ()  # /dev/disk/by-id/... and by-path/... (what node disk init takes)


@dataclass(frozen=True)
class SshHostKey:
    type: str  # "ssh-ed25519"
    fingerprint: str  # "SHA256:..." as ssh-keygen -l prints it
    public_key: str | None = None  # the base64 key: a known_hosts line is "<type> <public_key>"


@dataclass(frozen=True)
class Inventory:
    pci: tuple[PciDevice, ...] = ()
    cpu: Cpu | None = None
    memory_bytes: int | None = None
    dmi: Dmi = field(default_factory=Dmi)
    nics: tuple[Nic, ...] = ()
    disks: tuple[Disk, ...] = ()
    firmware: str | None = None  # "bios" | "uefi"
    kernel: str | None = None
    hostname: str | None = None
    ssh_host_keys: tuple[SshHostKey, ...] = ()
    partial: bool = False
    problems: list[str] = field(default_factory=list)


def hex_id(value: object, width: int = 4) -> str | None:
    """'0x10DE' / '10de' / 4318 -> '10de'; anything else -> None."""
    if isinstance(value, int) and not isinstance(value, bool):
        text = f"{value:x}"
    elif isinstance(value, str):
        text = value.strip().lower().removeprefix("0x")
    else:
        return None
    if not text or len(text) > width or any(c not in "0123456789abcdef" for c in text):
        return None
    return text.zfill(width)
