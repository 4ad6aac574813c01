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
from provisioner.discovery.model import Cpu, Disk, Dmi, Inventory, Nic, PciDevice, hex_id


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


# lshw's own translations (src/po of github.com/lyonel/lshw: ca, es, fr) and the German and
# Spanish that distributions ship (Launchpad's; seen in real dumps: tests/fixtures)
KEYS = {
    "descripció": "description",
    "descripción": "description",
    "producte": "product",
    "producto": "product",
    "produit": "product",
    "fabricant": "vendor",
    "fabricante": "vendor",
    "vendedor": "vendor",
    "id físic": "physid",
    "id físico": "physid",
    "identifiant matériel": "physid",
    "informació de bus": "businfo",
    "información de bus": "businfo",
    "información del bus": "businfo",
    "information bus": "businfo",
    "nom lògic": "logicalname",
    "nombre lógico": "logicalname",
    "nom logique": "logicalname",
    "versió": "version",
    "versión": "version",
    "numéro de série": "serial",
    "mida": "size",
    "tamaño": "size",
    "taille": "size",
    "capacitat": "capacity",
    "capacidad": "capacity",
    "capacité": "capacity",
    "configuració": "configuration",
    "configuración": "configuration",
    "capabilitats": "capabilities",
    "capabilidades": "capabilities",
    "fonctionnalités": "capabilities",
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
    tops: list[Node] = []  # `lshw -C display` prints several trees side by side
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
                tops.append(node)
            else:
                tops.append(node)
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
    if len(tops) > 1:  # one node above them, no machine of its own
        root = Node("", None, children=tops)
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


# lshw -numeric: "GA106 [GeForce RTX 3060 Lite Hash Rate] [10DE:2504]", "VMware [15AD]"
NUMERIC_IDS = re.compile(r"\s*\[(?P<v>[0-9A-Fa-f]{4}):(?P<d>[0-9A-Fa-f]{1,4})\]$")
NUMERIC_VENDOR = re.compile(r"\s*\[(?P<v>[0-9A-Fa-f]{4})\]$")


def _numeric(
    value: str | None, pattern: re.Pattern[str]
) -> tuple[str | None, str | None, str | None]:
    """(the name without lshw -numeric's ids, vendor id, device id): ids zero-padded."""
    if value is None:
        return None, None, None
    match = pattern.search(value)
    if not match:
        return value, None, None
    found = match.groupdict()
    device = hex_id(found["d"]) if found.get("d") else None
    return value[: match.start()].strip() or None, hex_id(found["v"]), device


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
            product, vendor, device = _numeric(opt(node.fields.get("product")), NUMERIC_IDS)
            vendor_name, vendor_id, _ = _numeric(opt(node.fields.get("vendor")), NUMERIC_VENDOR)
            pci.append(
                PciDevice(
                    address=businfo[4:].lower(),
                    vendor=vendor or vendor_id,
                    device=device if (vendor or vendor_id) else None,
                    pci_class=db.class_code(description) if description else None,
                    revision=opt(node.fields.get("version")),
                    driver=opt(node.config.get("driver")),
                    vendor_name=vendor_name,
                    device_name=product,
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
