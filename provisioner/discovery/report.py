"""The agent's raw report -> an inventory. Pure: text in, dataclasses out, no I/O.

The agent (``images/agent/provisioner-agent``) parses nothing on the node; it sends
sections, each a header line ``==> NAME <==`` followed by verbatim lines::

    ==> system <==          firmware=, kernel=, machine=, hostname=
    ==> file /proc/cpuinfo <==
    ==> file /proc/meminfo <==
    ==> dmi <==             name=value per /sys/class/dmi/id file
    ==> pci 0000:00:03.0 <== vendor=, device=, subsystem_vendor=, subsystem_device=,
                             class=, numa_node=, driver=
    ==> net eth0 <==        address=, speed=, driver=, operstate=, mtu=
    ==> block vda <==       size= (512-byte sectors), rotational=, removable=, model=
    ==> ssh <==             key=<type> <base64> [comment], one per host key (if any)

Anything this parser cannot read is listed in ``problems`` and skipped; it never raises.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import asdict, dataclass, field

HEADER = re.compile(r"^==> (.+?) <==$")
REPORT_VERSION = 1


@dataclass(frozen=True)
class PciDevice:
    address: str
    vendor: str  # "1af4" (lowercase hex, no 0x)
    device: str
    subsystem_vendor: str | None
    subsystem_device: str | None
    pci_class: str  # "020000"
    driver: str | None
    numa_node: int | None

    @property
    def ids(self) -> str:
        return f"{self.vendor}:{self.device}"


@dataclass(frozen=True)
class Nic:
    name: str
    mac: str | None
    speed_mbps: int | None
    driver: str | None
    operstate: str | None


@dataclass(frozen=True)
class Disk:
    name: str
    size_bytes: int
    rotational: bool | None
    removable: bool | None
    model: str | None
    serial: str | None = None
    ids: tuple[str, ...] = ()  # /dev/disk/by-id/... and by-path/... names (udev's)


@dataclass(frozen=True)
class Cpu:
    vendor: str | None
    model_name: str | None
    sockets: int
    cores: int
    threads: int
    flags: tuple[str, ...]


@dataclass(frozen=True)
class SshHostKey:
    type: str  # "ssh-ed25519"
    fingerprint: str  # "SHA256:..." as ssh-keygen -l prints it
    public_key: str | None = None  # the base64 key itself: "<type> <public_key>" pins it


def ssh_fingerprint(line: str) -> SshHostKey | None:
    """'ssh-ed25519 AAAA... comment' -> the key and its SHA256 fingerprint; None if not one."""
    parts = line.split()
    if len(parts) < 2:
        return None
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return SshHostKey(parts[0], f"SHA256:{digest}", parts[1])


@dataclass(frozen=True)
class Inventory:
    firmware: str | None  # "bios" | "uefi"
    kernel: str | None
    machine: str | None
    hostname: str | None
    cpu: Cpu | None
    memory_bytes: int | None
    dmi: dict[str, str]
    pci: tuple[PciDevice, ...]
    nics: tuple[Nic, ...]
    disks: tuple[Disk, ...]
    ssh_host_keys: tuple[SshHostKey, ...] = ()

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["schema"] = f"provisioner.inventory/{REPORT_VERSION}"
        return data


@dataclass
class ParseResult:
    inventory: Inventory
    problems: list[str] = field(default_factory=list)


def split_sections(text: str) -> list[tuple[str, list[str]]]:
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        match = HEADER.match(line)
        if match:
            sections.append((match.group(1), []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def _pairs(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key:
            out[key.strip()] = value.strip()
    return out


def _hex(value: str | None) -> str | None:
    if not value:
        return None
    value = value.lower().removeprefix("0x")
    return value if re.fullmatch(r"[0-9a-f]+", value) else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _bool(value: str | None) -> bool | None:
    return {"0": False, "1": True}.get(value or "")


def parse_cpuinfo(lines: list[str]) -> Cpu | None:
    blocks: list[dict[str, str]] = [{}]
    for line in lines:
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, sep, value = line.partition(":")
        if sep:
            blocks[-1][key.strip()] = value.strip()
    processors = [b for b in blocks if "processor" in b]
    if not processors:
        return None
    first = processors[0]
    sockets = {b.get("physical id", "0") for b in processors}
    cores = {(b.get("physical id", "0"), b.get("core id", b["processor"])) for b in processors}
    return Cpu(
        vendor=first.get("vendor_id"),
        model_name=first.get("model name"),
        sockets=len(sockets),
        cores=len(cores),
        threads=len(processors),
        flags=tuple(first.get("flags", "").split()),
    )


def parse_meminfo(lines: list[str]) -> int | None:
    for line in lines:
        match = re.match(r"MemTotal:\s+(\d+)\s*kB", line)
        if match:
            return int(match.group(1)) * 1024
    return None


def parse_report(text: str) -> ParseResult:
    problems: list[str] = []
    system: dict[str, str] = {}
    dmi: dict[str, str] = {}
    cpu: Cpu | None = None
    memory: int | None = None
    pci: list[PciDevice] = []
    nics: list[Nic] = []
    disks: list[Disk] = []
    keys: list[SshHostKey] = []
    sections = split_sections(text)
    if not sections:
        problems.append("no sections: not an agent report")
    for name, lines in sections:
        kind, _, arg = name.partition(" ")
        values = _pairs(lines)
        if kind == "agent":
            version = _int(values.get("version"))
            if version != REPORT_VERSION:
                problems.append(f"agent report version {values.get('version')!r}, expected 1")
        elif kind == "system":
            system = values
        elif kind == "dmi":
            dmi = values
        elif kind == "file" and arg == "/proc/cpuinfo":
            cpu = parse_cpuinfo(lines)
            if cpu is None:
                problems.append("/proc/cpuinfo: no processor entries")
        elif kind == "file" and arg == "/proc/meminfo":
            memory = parse_meminfo(lines)
            if memory is None:
                problems.append("/proc/meminfo: no MemTotal")
        elif kind == "pci":
            vendor, device, cls = (_hex(values.get(k)) for k in ("vendor", "device", "class"))
            if vendor is None or device is None or cls is None:
                problems.append(f"pci {arg}: missing vendor, device or class")
                continue
            pci.append(
                PciDevice(
                    address=arg,
                    vendor=vendor.zfill(4),
                    device=device.zfill(4),
                    subsystem_vendor=_hex(values.get("subsystem_vendor")),
                    subsystem_device=_hex(values.get("subsystem_device")),
                    pci_class=cls.zfill(6),
                    driver=values.get("driver") or None,
                    numa_node=_int(values.get("numa_node")),
                )
            )
        elif kind == "net":
            speed = _int(values.get("speed"))
            nics.append(
                Nic(
                    name=arg,
                    mac=(values.get("address") or "").lower() or None,
                    speed_mbps=speed if speed is not None and speed > 0 else None,
                    driver=values.get("driver") or None,
                    operstate=values.get("operstate") or None,
                )
            )
        elif kind == "block":
            sectors = _int(values.get("size"))
            if sectors is None:
                problems.append(f"block {arg}: no size")
                continue
            disks.append(
                Disk(
                    name=arg,
                    size_bytes=sectors * 512,
                    rotational=_bool(values.get("rotational")),
                    removable=_bool(values.get("removable")),
                    model=values.get("model") or None,
                    serial=values.get("serial") or None,
                    ids=tuple(values.get("ids", "").split()),
                )
            )
        elif kind == "ssh":
            for line in lines:
                key = ssh_fingerprint(line.partition("=")[2])
                if key is None:
                    problems.append(f"ssh: not a public key: {line[:40]!r}")
                else:
                    keys.append(key)
        else:
            problems.append(f"unknown section {name!r} skipped")
    firmware = system.get("firmware")
    if firmware not in ("bios", "uefi"):
        problems.append(f"system firmware {firmware!r} is neither bios nor uefi")
        firmware = None
    inventory = Inventory(
        firmware=firmware,
        kernel=system.get("kernel") or None,
        machine=system.get("machine") or None,
        hostname=system.get("hostname") or None,
        cpu=cpu,
        memory_bytes=memory,
        dmi=dmi,
        pci=tuple(pci),
        nics=tuple(nics),
        disks=tuple(disks),
        ssh_host_keys=tuple(keys),
    )
    return ParseResult(inventory, problems)
