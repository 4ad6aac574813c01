"""``nvidia-smi``: ``-q`` (text), ``-q -x`` (XML), ``-L`` and the default table.

``-q`` and ``-q -x`` carry ids (``Device Id 0x268410DE`` = device 2684, vendor 10de);
``-L`` and the table carry product names only. When a dump announces more attached GPUs
than it lists, the inventory is partial; if every listed GPU is the same model, the
unlisted ones are recorded as that model (address unknown) and a problem says so.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import replace

from provisioner.discovery.dumps.clean import opt, to_int
from provisioner.discovery.dumps.lenient import parse_xml
from provisioner.discovery.model import Inventory, PciDevice

NVIDIA = "10de"
GPU_HEADER = re.compile(r"^GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])\s*$")
KEY_VALUE = re.compile(r"^(\s*)([^:]+?)\s*:\s*(.*)$")
LIST_LINE = re.compile(r"^GPU (\d+): (.+?)(?: \(UUID: [^)]*\))?$")
# the row under a GPU's: "| N/A 35C P0 37W / 250W |  0MiB / 32768MiB |" (total: the second)
TABLE_MEMORY = re.compile(r"\|\s*\d+\s*MiB\s*/\s*(\d+)\s*MiB\s*\|")
TABLE_ROW = re.compile(
    r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off|N/A)\s+\|\s+"
    r"([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])"
)


def _ids(value: str | None) -> tuple[str | None, str | None]:
    """'0x268410DE' -> ('10de', '2684'): nvidia-smi prints device then vendor."""
    text = (value or "").strip().lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{8}", text):
        return None, None
    return text[4:], text[:4]


def _gpu(
    address: str | None, name: str | None, device_id: str | None, sub_id: str | None
) -> PciDevice:
    vendor, device = _ids(device_id)
    sub_vendor, sub_device = _ids(sub_id)
    return PciDevice(
        address=address.lower() if address else None,
        vendor=vendor or NVIDIA,
        device=device,
        subsystem_vendor=sub_vendor,
        subsystem_device=sub_device,
        driver="nvidia",
        vendor_name="NVIDIA Corporation",
        device_name=opt(name),
    )


def _finish(gpus: list[PciDevice], attached: int | None, problems: list[str]) -> Inventory:
    partial = False
    if attached is not None and attached > len(gpus):
        partial = True
        models = {(g.vendor, g.device, g.device_name) for g in gpus}
        if len(models) == 1:
            missing = attached - len(gpus)
            problems.append(
                f"{attached} GPUs attached but {len(gpus)} listed; the {missing} unlisted"
                " are assumed to be the same model (all listed ones are)"
            )
            gpus = gpus + [replace(gpus[0], address=None)] * missing
        else:
            problems.append(f"{attached} GPUs attached but {len(gpus)} listed")
    if not gpus:
        problems.append("no GPU entries found")
    return Inventory(pci=tuple(gpus), partial=partial or not gpus, problems=problems)


def parse_q(lines: list[str], notes: list[str]) -> Inventory:
    problems = list(notes)
    attached: int | None = None
    blocks: list[tuple[str, dict[str, str]]] = []
    for line in lines:
        header = GPU_HEADER.match(line.strip())
        if header and not line[0].isspace():
            blocks.append((header.group(1), {}))
            continue
        match = KEY_VALUE.match(line)
        if not match:
            continue
        key, value = match.group(2).strip(), match.group(3).strip()
        if key == "Attached GPUs" and not match.group(1):
            attached = to_int(value)
        elif blocks:
            blocks[-1][1].setdefault(key, value)
    gpus = [
        _gpu(address, f.get("Product Name"), f.get("Device Id"), f.get("Sub System Id"))
        for address, f in blocks
    ]
    return _finish(gpus, attached, problems)


def child_text(elem: ET.Element, path: str) -> str | None:
    found = elem.find(path)
    return found.text.strip() if found is not None and found.text else None


def parse_q_x(text: str, notes: list[str]) -> Inventory:
    root, partial, problems = parse_xml(text)
    problems = notes + problems
    if root is None:
        return Inventory(problems=[*problems, "no nvidia_smi_log found"], partial=True)

    gpus = [
        _gpu(
            gpu.get("id"),
            child_text(gpu, "product_name"),
            child_text(gpu, "pci/pci_device_id"),
            child_text(gpu, "pci/pci_sub_system_id"),
        )
        for gpu in root.iter("gpu")
    ]
    result = _finish(gpus, to_int(child_text(root, "attached_gpus")), problems)
    return replace(result, partial=result.partial or partial)


def parse_list(lines: list[str], notes: list[str]) -> Inventory:
    gpus = [_gpu(None, m.group(2), None, None) for m in map(LIST_LINE.match, lines) if m]
    return _finish(gpus, None, list(notes))


def parse_table(lines: list[str], notes: list[str]) -> Inventory:
    """The default table: a GPU's row (index, name, bus id), then its memory row. A name
    cut short by the column (``Tesla V100S-PCI...``) is kept as printed."""
    gpus: list[PciDevice] = []
    for line in lines:
        row = TABLE_ROW.match(line.strip())
        if row:
            gpus.append(_gpu(row.group(3), row.group(2), None, None))
            continue
        memory = TABLE_MEMORY.search(line)
        if memory and gpus and gpus[-1].memory_bytes is None:
            gpus[-1] = replace(gpus[-1], memory_bytes=int(memory.group(1)) * 1024**2)
    return _finish(gpus, None, list(notes))
