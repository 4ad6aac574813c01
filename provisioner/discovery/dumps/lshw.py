"""``lshw`` as a text tree, as JSON (object or array) and as XML. Names only, no PCI ids.

All three are read into one node shape (``Node``: id, class, fields, configuration,
children) and converted once. The text tree may be localised: German keys
(``Beschreibung``, ``Produkt``, ``Hersteller`` ...) are mapped to lshw's own.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from provisioner.discovery import pciids
from provisioner.discovery.dumps.clean import dmi_value, opt, size_bytes, to_int
from provisioner.discovery.dumps.lenient import loads_lenient, parse_xml
from provisioner.discovery.model import Cpu, Disk, Dmi, Inventory, Nic, PciDevice


@dataclass
class Node:
    id: str
    cls: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)

    def walk(self) -> list[Node]:
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        return out


KEYS = {
    "beschreibung": "description",
    "produkt": "product",
    "hersteller": "vendor",
    "seriennummer": "serial",
    "bus-informationen": "businfo",
    "bus info": "businfo",
    "logischer name": "logicalname",
    "logical name": "logicalname",
    "größe": "size",
    "kapazität": "capacity",
    "konfiguration": "configuration",
    "fähigkeiten": "capabilities",
    "physische id": "physid",
    "physical id": "physid",
}
ID_CLASS = {"cpu": "processor", "display": "display", "network": "network", "disk": "disk"}
NODE = re.compile(r"^(?P<indent>\s*)\*-(?P<id>\S+)")
FIELD = re.compile(r"^\s+(?P<key>[^:]+?):\s?(?P<value>.*)$")


def _config(value: str) -> dict[str, str]:
    return dict(re.findall(r"(\S+?)=(\S+)", value))


def parse_text_tree(lines: list[str]) -> tuple[Node | None, list[str]]:
    problems: list[str] = []
    root: Node | None = None
    stack: list[tuple[int, Node]] = []
    for line in lines:
        if not line.strip():
            continue
        node_match = NODE.match(line)
        if node_match:
            node_id = node_match.group("id")
            node = Node(node_id, ID_CLASS.get(node_id.split(":")[0]))
            depth = len(node_match.group("indent"))
            while stack and stack[-1][0] >= depth:
                stack.pop()
            if stack:
                stack[-1][1].children.append(node)
            elif root is None:
                root = node
            stack.append((depth, node))
            continue
        field_match = FIELD.match(line)
        if root is None and not line[0].isspace():
            root = Node(line.strip(), "system")
            stack = [(-1, root)]
            continue
        if field_match and stack:
            key = field_match.group("key").strip().lower()
            key = KEYS.get(key, key)
            value = field_match.group("value").strip()
            if key == "configuration":
                stack[-1][1].config.update(_config(value))
            else:
                stack[-1][1].fields.setdefault(key, value)
        else:
            problems.append(f"unreadable line {line.strip()[:80]!r}")
    return root, problems


def _json_node(data: object) -> Node | None:
    if not isinstance(data, dict):
        return None
    node = Node(str(data.get("id", "")), str(data["class"]) if "class" in data else None)
    for key, value in data.items():
        if key in ("children", "configuration", "capabilities", "id", "class"):
            continue
        if isinstance(value, list):
            value = value[0] if value else ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            node.fields[key] = str(value)
    config = data.get("configuration")
    if isinstance(config, dict):
        node.config = {str(k): str(v) for k, v in config.items()}
    children = data.get("children")
    if isinstance(children, list):
        node.children = [c for c in (_json_node(x) for x in children) if c is not None]
    return node


def _xml_node(elem: ET.Element) -> Node:
    node = Node(elem.get("id", ""), elem.get("class"))
    for child in elem:
        if child.tag == "node":
            node.children.append(_xml_node(child))
        elif child.tag == "configuration":
            for setting in child.iter("setting"):
                node.config[setting.get("id", "")] = setting.get("value", "")
        elif child.tag != "capabilities" and child.text:
            node.fields.setdefault(child.tag, child.text.strip())
            if child.get("units"):
                node.fields.setdefault(child.tag + "_units", child.get("units", ""))
    return node


def parse_text(lines: list[str], notes: list[str]) -> Inventory:
    root, problems = parse_text_tree(lines)
    return _inventory(root, notes + problems, partial=False)


def parse_json(text: str, notes: list[str]) -> Inventory:
    data, partial, problems = loads_lenient(text)
    roots = data if isinstance(data, list) else [data]
    root = _json_node(roots[0]) if roots else None
    if len(roots) > 1:
        problems.append(f"{len(roots)} top-level lshw objects; read the first")
    return _inventory(root, notes + problems, partial)


def parse_xml_dump(text: str, notes: list[str]) -> Inventory:
    elem, partial, problems = parse_xml(text)
    if elem is not None and elem.tag != "node":
        elem = elem.find("node")
    root = _xml_node(elem) if elem is not None else None
    return _inventory(root, notes + problems, partial)


def _bytes(node: Node, key: str = "size") -> int | None:
    value = node.fields.get(key)
    if value is None:
        return None
    if value.isdigit():
        units = node.fields.get(key + "_units", node.fields.get("units", "bytes"))
        return int(value) if units in ("bytes", "") else None
    return size_bytes(value)


def _inventory(root: Node | None, problems: list[str], partial: bool) -> Inventory:
    if root is None:
        return Inventory(problems=[*problems, "no lshw tree found"], partial=True)
    db = pciids.default()
    pci: list[PciDevice] = []
    cpus: list[Node] = []
    nics: list[Nic] = []
    disks: list[Disk] = []
    memory: int | None = None
    board: Node | None = None
    bios: Node | None = None
    for node in root.walk():
        base = node.id.split(":")[0]
        cls = node.cls or ID_CLASS.get(base)
        businfo = node.fields.get("businfo", "")
        if base == "core" and board is None:
            board = node
        elif base == "firmware" and bios is None:
            bios = node
        elif base == "memory" and memory is None and cls in (None, "memory"):
            memory = _bytes(node)
        if cls == "processor" and node.fields.get("product"):
            cpus.append(node)
        if businfo.startswith("pci@"):
            description = opt(node.fields.get("description"))
            pci.append(
                PciDevice(
                    address=businfo[4:].lower(),
                    pci_class=db.class_code(description) if description else None,
                    revision=opt(node.fields.get("version")),
                    driver=opt(node.config.get("driver")),
                    vendor_name=opt(node.fields.get("vendor")),
                    device_name=opt(node.fields.get("product")),
                    class_name=description,
                )
            )
        if cls == "network" and "logicalname" in node.fields:
            speed: int | None = None
            size = node.fields.get("size", "")
            match = re.match(r"(\d+)\s*([MG])bit", size)
            if match:
                speed = int(match.group(1)) * (1000 if match.group(2) == "G" else 1)
            elif size.isdigit():
                speed = int(size) // 1_000_000
            nics.append(
                Nic(
                    name=node.fields["logicalname"],
                    mac=opt(node.fields.get("serial")),
                    speed_mbps=speed,
                    driver=opt(node.config.get("driver")),
                )
            )
        if cls == "disk" and base == "disk":
            disks.append(
                Disk(
                    name=opt(node.fields.get("logicalname")),
                    size_bytes=_bytes(node),
                    model=opt(node.fields.get("product")),
                    serial=opt(node.fields.get("serial")),
                )
            )
    cpu = None
    if cpus:
        cores = [to_int(c.config.get("cores")) for c in cpus]
        threads = [to_int(c.config.get("threads")) for c in cpus]
        cpu = Cpu(
            vendor=opt(cpus[0].fields.get("vendor")),
            model_name=opt(cpus[0].fields.get("product")),
            sockets=len(cpus),
            cores=sum(c for c in cores if c) or None,
            threads=sum(t for t in threads if t) or None,
        )
    dmi = Dmi(
        system_vendor=dmi_value(root.fields.get("vendor")),
        system_product=dmi_value(root.fields.get("product")),
        system_serial=dmi_value(root.fields.get("serial")),
        board_vendor=dmi_value(board.fields.get("vendor")) if board else None,
        board_name=dmi_value(board.fields.get("product")) if board else None,
        bios_vendor=dmi_value(bios.fields.get("vendor")) if bios else None,
        bios_version=dmi_value(bios.fields.get("version")) if bios else None,
    )
    return Inventory(
        pci=tuple(pci),
        cpu=cpu,
        memory_bytes=memory,
        dmi=dmi,
        nics=tuple(nics),
        disks=tuple(disks),
        hostname=opt(root.id) if root.cls == "system" or root.fields else None,
        partial=partial,
        problems=problems,
    )
