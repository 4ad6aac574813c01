"""``dmidecode`` (2.9 to 3.6 layouts): system, board, BIOS, processors, memory devices."""

from __future__ import annotations

import re

from provisioner.discovery.dumps.clean import dmi_value, size_bytes, to_int
from provisioner.discovery.model import Cpu, Dmi, Inventory

HANDLE = re.compile(r"^Handle 0x[0-9A-Fa-f]+, DMI type (\d+)")


def _records(lines: list[str]) -> list[tuple[int, dict[str, str]]]:
    records: list[tuple[int, dict[str, str]]] = []
    for line in lines:
        match = HANDLE.match(line.strip())
        if match:
            records.append((int(match.group(1)), {}))
            continue
        if not records or not line.startswith(("\t", " ")):
            continue
        key, sep, value = line.strip().partition(":")
        if sep and key and line.startswith(("\t", " ")) and not line.startswith(("\t\t", "  \t")):
            records[-1][1].setdefault(key.strip(), value.strip())
    return records


def _value(record: dict[str, str] | None, key: str) -> str | None:
    return dmi_value(record.get(key)) if record else None


def parse(lines: list[str], notes: list[str]) -> Inventory:
    records = _records(lines)
    problems = list(notes)
    if not records:
        return Inventory(problems=[*problems, "no DMI records found"], partial=True)
    first: dict[int, dict[str, str]] = {}
    for kind, record in records:
        first.setdefault(kind, record)
    bios, system, board = first.get(0), first.get(1), first.get(2)
    sockets = [r for kind, r in records if kind == 4]
    populated = [r for r in sockets if "unpopulated" not in r.get("Status", "").lower()]
    cpu = None
    if populated:
        cores = [to_int(r.get("Core Count")) for r in populated]
        threads = [to_int(r.get("Thread Count")) for r in populated]
        cpu = Cpu(
            vendor=_value(populated[0], "Manufacturer"),
            model_name=_value(populated[0], "Version"),
            sockets=len(populated),
            cores=sum(c for c in cores if c) or None,
            threads=sum(t for t in threads if t) or None,
        )
    memory = 0
    for kind, record in records:
        if kind == 17:
            memory += size_bytes(record.get("Size"), binary_si=True) or 0
    dmi = Dmi(
        system_vendor=_value(system, "Manufacturer"),
        system_product=_value(system, "Product Name"),
        system_serial=_value(system, "Serial Number"),
        board_vendor=_value(board, "Manufacturer"),
        board_name=_value(board, "Product Name"),
        bios_vendor=_value(bios, "Vendor"),
        bios_version=_value(bios, "Version"),
    )
    return Inventory(cpu=cpu, memory_bytes=memory or None, dmi=dmi, problems=problems)
