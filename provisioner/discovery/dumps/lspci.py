"""``lspci`` in its usual shapes: -nn, -nnk, -v[v]nn, plain (with or without -k), -vmm[nn].

One reader serves every one-header-per-device shape: a header line
``01:00.0 3D controller [0302]: NVIDIA Corporation GV100GL [Tesla V100 SXM2 16GB] [10de:1db1]
(rev a1)`` followed by indented attribute lines. ``-vmm`` is a ``Key:<tab>value`` record
format and has its own reader. Name-only shapes leave ids empty; ids are filled from the
names later (see :mod:`provisioner.discovery.accelerators`), never guessed here.
"""

from __future__ import annotations

import re

from provisioner.discovery import pciids
from provisioner.discovery.dumps.clean import opt, to_int
from provisioner.discovery.model import Inventory, PciDevice, hex_id

# "01:00.0", "0000:01:00.0"; lspci -P/-PP paths: "00:01.1/00.0", "00:01.1/03:00.0"
ADDRESS = (
    r"(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]"
    r"(?:/(?:[0-9a-fA-F]{2}:)?[0-9a-fA-F]{2}\.[0-7])*"
)
HEADER = re.compile(rf"^(?P<addr>{ADDRESS})\s+(?P<rest>\S.*)$")
CLASS = re.compile(
    r"^(?P<cls>[^:\[]*?[^:\[\s])(?:\s*\[(?P<code>[0-9a-fA-F]{4})\])?:\s*(?P<desc>.*)$"
)
IDS_AT_END = re.compile(r"\s*\[(?P<v>[0-9a-fA-F]{4}):(?P<d>[0-9a-fA-F]{4})\]$")
REV_AT_END = re.compile(r"\s*\(rev (?P<rev>[0-9a-fA-F]{1,2})\)$")
PROGIF_AT_END = re.compile(r"\s*\(prog-if (?P<pi>[0-9a-fA-F]{2})(?: \[[^\]]*\])?\)$")
NUMA = re.compile(r"NUMA node:?\s*(\d+)")
# what lspci prints for an id its pci.ids does not name: "Device 20b2"
BARE_DEVICE = re.compile(r"^Device ([0-9a-fA-F]{4})$")
VERBOSE_KEYS = ("Flags:", "Capabilities:", "Control:", "Status:", "Memory at", "I/O ports")


def is_header(line: str) -> bool:
    match = HEADER.match(line)
    return bool(match and CLASS.match(match.group("rest")))


def _split_desc(desc: str, db: pciids.PciIds) -> dict[str, str | None]:
    """'NVIDIA Corporation GA106 [Geforce RTX 3050] [10de:2507] (rev a1)' -> parts."""
    out: dict[str, str | None] = {"revision": None, "prog_if": None, "vendor": None, "device": None}
    desc = desc.rstrip("'\"`")  # a quote the paste closed on the line
    while True:
        for pattern, key in ((REV_AT_END, "revision"), (PROGIF_AT_END, "prog_if")):
            match = pattern.search(desc)
            if match:
                out[key] = match.group(1).lower()
                desc = desc[: match.start()]
                break
        else:
            break
    match = IDS_AT_END.search(desc)
    if match:
        out["vendor"], out["device"] = match.group("v").lower(), match.group("d").lower()
        desc = desc[: match.start()]
    vendor_name: str | None = None
    device_name = desc.strip()
    known = db.vendor_name(out["vendor"]) if out["vendor"] else None
    if known and device_name.lower().startswith(known.lower()):
        vendor_name, device_name = known, device_name[len(known) :].strip()
    else:
        vendor_ids, rest = db.split_vendor(device_name)
        if vendor_ids:
            vendor_name = device_name[: len(device_name) - len(rest)].strip()
            device_name = rest
    out["vendor_name"], out["device_name"] = vendor_name, device_name or None
    bare = BARE_DEVICE.match(device_name)
    if bare and out["vendor"] is None and vendor_name:
        vendor_ids = db.vendor_ids(vendor_name)
        if len(vendor_ids) == 1:  # the id as printed, the vendor's by its unique name
            out["vendor"], out["device"] = vendor_ids[0], bare.group(1).lower()
    return out


def _unwrap(lines: list[str]) -> list[str]:
    """Join mail-wrapped header lines: an unindented non-header line continues the header."""
    out: list[str] = []
    for line in lines:
        if (
            out
            and line.strip()
            and not line[0].isspace()
            and not is_header(line)
            and is_header(out[-1])
        ):
            out[-1] = f"{out[-1]} {line.strip()}"
        else:
            out.append(line)
    return out


def parse_lspci(lines: list[str], notes: list[str]) -> Inventory:
    """Every header-style lspci shape; attribute lines fill subsystem, driver, NUMA node."""
    db = pciids.default()
    problems = list(notes)
    devices: list[dict[str, str | None]] = []
    for line in _unwrap(lines):
        if not line.strip():
            continue
        header = HEADER.match(line)
        match = CLASS.match(header.group("rest")) if header else None
        if header and match:
            parts = _split_desc(match.group("desc"), db)
            parts["address"] = header.group("addr").lower()
            parts["class_name"] = match.group("cls").strip()
            parts["pci_class"] = (match.group("code") or "").lower() or None
            devices.append(parts)
            continue
        if not devices or not line[0].isspace():
            problems.append(f"unreadable line {line.strip()[:80]!r}")
            continue
        body = line.strip()
        current = devices[-1]
        key, _, value = body.partition(":")
        if key == "Subsystem":
            sub = IDS_AT_END.search(REV_AT_END.sub("", value.strip()))
            if sub:
                current["subsystem_vendor"] = sub.group("v").lower()
                current["subsystem_device"] = sub.group("d").lower()
        elif key == "Kernel driver in use":
            current["driver"] = opt(value)
        numa = NUMA.search(body)
        if numa and (key in ("NUMA node", "Flags")):
            current["numa_node"] = numa.group(1)
    pci = tuple(_device(d, db) for d in devices)
    if not pci:
        problems.append("no PCI device lines found")
    return Inventory(pci=pci, problems=problems, partial=not pci)


def _device(d: dict[str, str | None], db: pciids.PciIds) -> PciDevice:
    pci_class = d.get("pci_class") or (
        db.class_code(d["class_name"] or "") if d.get("class_name") else None
    )
    return PciDevice(
        address=d.get("address"),
        vendor=d.get("vendor"),
        device=d.get("device"),
        subsystem_vendor=d.get("subsystem_vendor"),
        subsystem_device=d.get("subsystem_device"),
        pci_class=pci_class,
        prog_if=d.get("prog_if"),
        revision=d.get("revision"),
        driver=d.get("driver"),
        numa_node=to_int(d.get("numa_node")),
        vendor_name=d.get("vendor_name"),
        device_name=d.get("device_name"),
        class_name=d.get("class_name"),
    )


VMM_KEY = re.compile(
    r"^(Slot|Class|Vendor|Device|SVendor|SDevice|Rev|ProgIf|Driver|Module|NUMANode|PhySlot|IOMMUGroup):\s*(.*)$"
)
NAME_AND_ID = re.compile(r"^(?P<name>.*?)\s*\[(?P<id>[0-9a-fA-F]{4})\]$")


def parse_vmm(lines: list[str], notes: list[str]) -> Inventory:
    """``lspci -vmm[nn][k]``: records of ``Key:<tab>value`` separated by blank lines."""
    db = pciids.default()
    problems = list(notes)
    records: list[dict[str, str]] = [{}]
    for line in lines:
        if not line.strip():
            if records[-1]:
                records.append({})
            continue
        match = VMM_KEY.match(line.strip())
        if not match:
            problems.append(f"unreadable line {line.strip()[:80]!r}")
            continue
        if match.group(1) == "Slot" and "Slot" in records[-1]:
            records.append({})
        records[-1].setdefault(match.group(1), match.group(2).strip())
    pci: list[PciDevice] = []
    for rec in records:
        if "Slot" not in rec:
            continue
        fields: dict[str, tuple[str | None, str | None]] = {}
        for key in ("Class", "Vendor", "Device", "SVendor", "SDevice"):
            value = rec.get(key, "")
            named = NAME_AND_ID.match(value)
            fields[key] = (
                (named.group("name"), named.group("id").lower()) if named else (opt(value), None)
            )
        cls_name, cls_code = fields["Class"]
        pci.append(
            PciDevice(
                address=rec["Slot"].lower(),
                vendor=fields["Vendor"][1],
                device=fields["Device"][1],
                subsystem_vendor=fields["SVendor"][1],
                subsystem_device=fields["SDevice"][1],
                pci_class=cls_code or (db.class_code(cls_name) if cls_name else None),
                prog_if=hex_id(rec.get("ProgIf"), 2),
                revision=hex_id(rec.get("Rev"), 2),
                driver=opt(rec.get("Driver")),
                numa_node=to_int(rec.get("NUMANode")),
                vendor_name=fields["Vendor"][0],
                device_name=fields["Device"][0],
                class_name=cls_name,
            )
        )
    if not pci:
        problems.append("no lspci -vmm records found")
    return Inventory(pci=tuple(pci), problems=problems, partial=not pci)
