"""Compute runtimes' device lists: ``sycl-ls``, ``rocminfo``, ``clinfo``. Names, some ids.

A runtime may list one GPU under several backends (``sycl-ls`` shows each Intel GPU under
OpenCL and Level-Zero; ``clinfo`` under each platform that drives it): a device name
counts as many times as the backend that lists it most often, never the sum.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import replace

from provisioner.discovery.dumps.clean import opt, strip_ansi, to_int
from provisioner.discovery.model import Cpu, Inventory, PciDevice, hex_id

VENDOR_WORDS = (
    ("intel", "8086", "Intel Corporation"),
    ("nvidia", "10de", "NVIDIA Corporation"),
    ("amd", "1002", "Advanced Micro Devices, Inc. [AMD/ATI]"),
    ("advanced micro devices", "1002", "Advanced Micro Devices, Inc. [AMD/ATI]"),
)
SYCL = re.compile(
    r"^\[(?P<backend>[a-z_]+):(?P<kind>[a-z]+)(?::\d+)?\](?:\[[^\]]*\])?\s+"
    r"(?P<platform>[^,]+),\s+(?P<rest>.+)$"
)
SYCL_TAIL = re.compile(
    r"\s*(?:OpenCL \d+\.\d+(?: NEO)?(?: \(Build \d+\))?|\d+\.\d+(?:\.\d+)*)?\s*(?:\[[^\]]*\])?\s*$"
)


# "Intel(R) Graphics [0x5693]": Intel's compute runtime names a part it has no marketing
# name for by its PCI device id
DEVICE_ID_IN_NAME = re.compile(r"\[0x(?P<id>[0-9a-fA-F]{4})\]")


def named_device(vendor: str | None, vendor_name: str | None, name: str) -> PciDevice:
    """A device known by its name; the id too when the name carries it ``[0x5693]``."""
    match = DEVICE_ID_IN_NAME.search(name)
    device = match.group("id").lower() if match and vendor else None
    return PciDevice(vendor=vendor, device=device, vendor_name=vendor_name, device_name=name)


def _vendor(text: str) -> tuple[str | None, str | None]:
    lowered = text.lower()
    for word, vid, name in VENDOR_WORDS:
        if word in lowered:
            return vid, name
    return None, None


def _once_per_device(listing: dict[str, Counter[str]]) -> Counter[str]:
    """{backend: Counter(name)} -> Counter(name) with the largest count per name."""
    total: Counter[str] = Counter()
    for counts in listing.values():
        for name, count in counts.items():
            total[name] = max(total[name], count)
    return total


def parse_sycl(lines: list[str], notes: list[str]) -> Inventory:
    problems = list(notes)
    listing: dict[str, Counter[str]] = defaultdict(Counter)
    vendors: dict[str, str] = {}
    cpu_name: str | None = None
    for line in lines:
        match = SYCL.match(line.strip())
        if not match:
            if line.strip():
                problems.append(f"unreadable line {line.strip()[:80]!r}")
            continue
        name = SYCL_TAIL.sub("", match.group("rest")).strip()
        if match.group("kind") == "gpu" and name:
            listing[match.group("backend")][name] += 1
            vendors[name] = match.group("platform") + " " + name
        elif match.group("kind") == "cpu" and name:
            cpu_name = cpu_name or name
    pci: list[PciDevice] = []
    for name, count in sorted(_once_per_device(listing).items()):
        vid, vname = _vendor(vendors[name])
        pci.extend([named_device(vid, vname, name)] * count)
    if not listing:
        problems.append("no GPU entries found")
    cpu = Cpu(model_name=cpu_name) if cpu_name else None
    return Inventory(pci=tuple(pci), cpu=cpu, problems=problems)


def parse_rocminfo(lines: list[str], notes: list[str]) -> Inventory:
    problems = list(notes)
    agents: list[dict[str, str]] = []
    for raw in lines:
        line = strip_ansi(raw)
        if re.match(r"^\s*Agent \d+\s*$", line):
            agents.append({})
            continue
        key, sep, value = line.strip().partition(":")
        if agents and sep and raw.startswith("  ") and not raw.startswith("    "):
            agents[-1].setdefault(key.strip(), value.strip())
    pci: list[PciDevice] = []
    cpu_name: str | None = None
    for agent in agents:
        kind = agent.get("Device Type", "").upper()
        if kind == "CPU":
            cpu_name = cpu_name or opt(agent.get("Marketing Name"))
            continue
        if kind != "GPU":
            continue
        chip = re.search(r"0x([0-9a-fA-F]+)", agent.get("Chip ID", ""))
        vid, vname = _vendor(agent.get("Vendor Name", ""))
        bdf = to_int(agent.get("BDFID"))
        address = f"{bdf >> 8:02x}:{(bdf >> 3) & 0x1F:02x}.{bdf & 7}" if bdf else None
        pci.append(
            PciDevice(
                address=address,
                vendor=vid,
                device=hex_id(chip.group(1)) if chip else None,
                vendor_name=vname,
                device_name=opt(agent.get("Marketing Name")) or opt(agent.get("Name")),
            )
        )
    if not agents:
        problems.append("no HSA agents found")
    cpu = Cpu(model_name=cpu_name) if cpu_name else None
    return Inventory(pci=tuple(pci), cpu=cpu, problems=problems, partial=not agents)


CLINFO_KV = re.compile(r"^\s*(?P<key>[A-Z][A-Za-z ()/-]+?)\s{2,}(?P<value>\S.*)$")
CLINFO_LIST = re.compile(r"^\s*[`|]--\s*Device #\d+:\s*(?P<name>.+)$")
CLINFO_PLATFORM = re.compile(r"^Platform #\d+:\s*(?P<name>.+)$")
BUS = re.compile(r"([0-9a-fA-F]{4}:)?([0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])")


def parse_clinfo(lines: list[str], notes: list[str]) -> Inventory:
    """``clinfo`` (long form) or ``clinfo -l`` (tree of platforms and devices)."""
    problems = list(notes)
    devices: list[dict[str, str]] = []
    platform = ""
    for line in lines:
        listed = CLINFO_LIST.match(line)
        plat = CLINFO_PLATFORM.match(line.strip())
        if plat:
            platform = plat.group("name")
            continue
        if listed:
            devices.append({"Device Name": listed.group("name").strip(), "platform": platform})
            continue
        match = CLINFO_KV.match(line)
        if not match:
            continue
        key, value = match.group("key").strip(), match.group("value").strip()
        if key == "Platform Name":
            platform = value
        elif key == "Device Name":
            devices.append({"Device Name": value, "platform": platform})
        elif devices:
            devices[-1].setdefault(key, value)
    listing: dict[str, Counter[str]] = defaultdict(Counter)
    by_address: dict[str, PciDevice] = {}
    for dev in devices:
        kind = dev.get("Device Type", "GPU")
        if "GPU" not in kind.upper():
            continue
        name = dev["Device Name"]
        vid = hex_id(dev.get("Device Vendor ID"))
        vname = None
        if vid is None:
            vid, vname = _vendor(dev["platform"] + " " + name)
        bus = BUS.search(
            dev.get("Device PCI bus info (KHR)", "") or dev.get("Device Topology (AMD)", "")
        )
        device = replace(
            named_device(vid, vname, name), address=bus.group(2).lower() if bus else None
        )
        if device.address:
            by_address.setdefault(device.address, device)
        else:
            listing[dev["platform"]][name] += 1
            by_address.setdefault("name:" + name, device)
    pci = [d for key, d in by_address.items() if not key.startswith("name:")]
    counts = _once_per_device(listing)
    if set(listing) == {""} and any(n > 1 for n in counts.values()):
        # `clinfo | grep "Device Name"`: the platform lines are gone, and clinfo names each
        # device in its platform's list and again in its details: how many is unknowable
        problems.append("clinfo without its platform lines: each device name counted once")
        counts = Counter(dict.fromkeys(counts, 1))
    for name, count in counts.items():
        pci.extend([by_address["name:" + name]] * count)
    if not devices:
        problems.append("no OpenCL devices found")
    return Inventory(pci=tuple(pci), problems=problems)


# xpu-smi discovery (Intel's XPU manager): a table of "| 0 | Device Name: ... |" rows
XPU_ROW = re.compile(
    r"^\|\s*(?P<index>\d+)?\s*\|\s*(?P<key>[A-Za-z][A-Za-z ]*?):\s*(?P<value>.*?)\s*\|$"
)
XPU_UUID_IDS = re.compile(r"([0-9a-fA-F]{4})(8086)$")  # "...-000856a08086": device 56a0, Intel


def parse_xpu_smi(lines: list[str], notes: list[str]) -> Inventory:
    """``xpu-smi discovery``: each GPU's name, bus address and, where the table shows it,
    its device id (``PCI Device ID: 0xe20b``, or the last 8 digits of its ``SOC UUID``,
    device then vendor, as the Level Zero UUID of an Intel GPU ends)."""
    problems = list(notes)
    rows: list[dict[str, str]] = []
    for line in lines:
        match = XPU_ROW.match(line.strip())
        if not match:
            continue
        if match.group("index") is not None:
            rows.append({})
        if rows:
            rows[-1].setdefault(match.group("key"), match.group("value"))
    pci: list[PciDevice] = []
    for row in rows:
        name = opt(row.get("Device Name"))
        device = hex_id(row.get("PCI Device ID"))
        uuid = XPU_UUID_IDS.search(row.get("SOC UUID") or row.get("UUID") or "")
        if device is None and uuid:
            device = uuid.group(1).lower()
        bus = BUS.search(row.get("PCI BDF Address", ""))
        vid, vname = _vendor(row.get("Vendor Name", "") + " " + (name or ""))
        pci.append(
            PciDevice(
                address=bus.group(0).lower() if bus else None,
                vendor=vid,
                device=device if vid else None,
                vendor_name=vname,
                device_name=name,
            )
        )
    if not pci:
        problems.append("no xpu-smi devices found")
    return Inventory(pci=tuple(pci), problems=problems, partial=not pci)
