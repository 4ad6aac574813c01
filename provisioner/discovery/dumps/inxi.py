"""``inxi -F[x[x]][z]``: sections of ``key: value`` runs; GPUs under ``Graphics:``.

inxi prints vendor and device names (``NVIDIA GP102GL [Tesla P40]``); ids only with
``-xxx`` (``chip-ID: 10de:1b38``).
"""

from __future__ import annotations

import re

from provisioner.discovery.dumps.clean import opt, size_bytes
from provisioner.discovery.model import Cpu, Dmi, Inventory, PciDevice

SECTION = re.compile(r"^(?P<name>[A-Z][A-Za-z ]*):(?:\s+(?P<rest>.*))?$")
PAIR = re.compile(r"(?:^|\s)(?P<key>[A-Za-z][\w()-]*(?: [A-Z(][\w()-]*)?):\s")


def _pairs(text: str) -> list[tuple[str, str]]:
    """'Device-1: NVIDIA GP102GL [Tesla P40] driver: nvidia' -> [('Device-1', ...), ...]."""
    marks = list(PAIR.finditer(text))
    out: list[tuple[str, str]] = []
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        out.append((mark.group("key"), text[mark.end() : end].strip()))
    return out


def parse(lines: list[str], notes: list[str]) -> Inventory:
    problems = list(notes)
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in lines:
        match = SECTION.match(line)
        if match and not line[0].isspace():
            current = match.group("name")
            sections.setdefault(current, [])
            if match.group("rest"):
                sections[current].append(match.group("rest"))
        elif current and line.strip():
            sections[current].append(line.strip())
    if not sections:
        return Inventory(problems=[*problems, "no inxi sections found"], partial=True)
    pci: list[PciDevice] = []
    for entry in _entries(sections.get("Graphics", [])):
        pairs = dict(_pairs(entry))
        name = next((v for k, v in _pairs(entry) if k.startswith("Device-")), None)
        if name is None:
            continue
        chip = re.match(r"([0-9a-f]{4}):([0-9a-f]{4})", pairs.get("chip-ID", ""))
        pci.append(
            PciDevice(
                address=opt(pairs.get("bus-ID")),
                vendor=chip.group(1) if chip else None,
                device=chip.group(2) if chip else None,
                driver=opt(pairs.get("driver")),
                device_name=name,
            )
        )
    system = dict(_pairs(" ".join(sections.get("System", []))))
    machine_pairs = _pairs(" ".join(sections.get("Machine", [])))
    machine = dict(machine_pairs)
    cpu_pairs = dict(_pairs(" ".join(sections.get("CPU", []))))
    info = dict(_pairs(" ".join(sections.get("Info", []))))
    firmware = "uefi" if "UEFI" in machine else ("bios" if "BIOS" in machine else None)
    bios = machine.get("UEFI") or machine.get("BIOS") or ""
    bios_version = _after(machine_pairs, ("UEFI", "BIOS"), "v")
    board = machine.get("Mobo", "")
    cores = re.match(r"(\d+)-core", cpu_pairs.get("Info", ""))
    flags = tuple(cpu_pairs.get("Flags", "").split())
    cpu = Cpu(
        model_name=opt(cpu_pairs.get("model")),
        cores=int(cores.group(1)) if cores else None,
        flags=flags,
    )
    return Inventory(
        pci=tuple(pci),
        cpu=cpu if cpu.model_name else None,
        memory_bytes=size_bytes(info.get("Memory")),
        dmi=Dmi(
            system_vendor=opt(machine.get("System")),
            system_product=opt(machine.get("product")),
            board_vendor=opt(board.split(" model:")[0]) if board else None,
            board_name=opt(machine.get("model")),
            bios_vendor=opt(bios.split(" v:")[0]) if bios else None,
            bios_version=bios_version,
        ),
        kernel=opt((system.get("Kernel") or "").split(" ")[0]),
        firmware=firmware,
        problems=problems,
    )


def _after(pairs: list[tuple[str, str]], keys: tuple[str, ...], wanted: str) -> str | None:
    """The value of ``wanted`` in the run of pairs that follows one of ``keys``."""
    for index, (key, _value) in enumerate(pairs):
        if key in keys:
            for later, value in pairs[index + 1 :]:
                if later == wanted:
                    return opt(value)
                if later[:1].isupper():
                    break
    return None


def _entries(lines: list[str]) -> list[str]:
    """Join continuation lines onto the ``Device-N:`` line they belong to."""
    entries: list[str] = []
    for line in lines:
        if re.match(r"^(Device-\d+|Display|Message|API|Monitor-\d+|Info|IF(-ID-\d+)?):", line):
            entries.append(line)
        elif entries:
            entries[-1] += " " + line
    return entries
