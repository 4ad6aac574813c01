"""GPU families: every PCI id of an architecture, derived from pci.ids by chip name.

``hwprofiles/gpu-families.yaml`` names each family's vendor, chip codes (``GA102``,
``AD107``, ``DG2``), architecture and CUDA compute capability, with their sources. A
family's members are every device of that vendor whose pci.ids name starts with one of the
chips (``GA102 [GeForce RTX 3090]``, ``GA102GL [RTX A6000]``, ``AD107M [GeForce RTX 4060
Max-Q / Mobile]``), minus the functions that are not the GPU (HDMI audio, USB-C, NVSwitch).
Pure once the table and pci.ids are loaded; a family profile's rule
(``pci: {family: nvidia-ampere}``) is expanded with :func:`member_ids` when profiles load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from provisioner.data import HWPROFILES
from provisioner.discovery import pciids
from provisioner.errors import ProvisionerError

TABLE = HWPROFILES / "gpu-families.yaml"
KEYS = frozenset({"name", "vendor", "architecture", "chips", "compute_capability", "source"})
_CC = re.compile(r"^\d{1,2}\.\d$")


class FamilyTableError(ProvisionerError):
    """gpu-families.yaml is malformed: names the family, the key and why."""


@dataclass(frozen=True)
class Family:
    name: str
    vendor: str  # "10de"
    architecture: str  # "Ampere"
    chips: tuple[str, ...]  # pci.ids name prefixes: ("GA102", "GA103", ...)
    compute_capability: str | None  # "8.6" (NVIDIA); None for other vendors
    source: str

    @property
    def gpu_arch(self) -> str | None:
        """The CUDA architecture number a build targets: '8.6' -> '86', '10.3' -> '103'."""
        return self.compute_capability.replace(".", "") if self.compute_capability else None


@dataclass(frozen=True)
class Member:
    vendor: str
    device: str
    name: str  # the pci.ids name
    chip: str  # the family's chip the name starts with


@dataclass(frozen=True)
class Table:
    families: tuple[Family, ...]
    exclude: re.Pattern[str]

    def get(self, name: str) -> Family | None:
        return next((f for f in self.families if f.name == name), None)

    def members(self, family: Family, db: pciids.PciIds) -> tuple[Member, ...]:
        """Every pci.ids device of the family, sorted by id."""
        return _members(self, family, db)

    def member_ids(self, name: str, db: pciids.PciIds) -> tuple[tuple[str, str], ...]:
        family = self.get(name)
        if family is None:
            return ()
        return tuple((m.vendor, m.device) for m in self.members(family, db))

    def chip_members(
        self, name: str, vendors: list[str] | None, db: pciids.PciIds
    ) -> list[tuple[str, str]]:
        """The ids of the chip a name starts with ('TU116M [GeForce ...]' -> every TU116M
        part), for names pci.ids spells otherwise; [] when it names no family's chip."""
        code = name.strip().split(" ", 1)[0]
        for family in self.families:
            if vendors is not None and family.vendor not in vendors:
                continue
            if _chip(family, code, self.exclude) is None:
                continue
            return [
                (m.vendor, m.device)
                for m in self.members(family, db)
                if m.name.split(" ", 1)[0] == code
            ]
        return []

    def family_of(self, vendor: str, device: str, db: pciids.PciIds) -> Family | None:
        """The family ``vendor:device`` belongs to, by its pci.ids name (None: none)."""
        name = db.name(vendor, device)
        if name is None:
            return None
        for family in self.families:
            if family.vendor == vendor and _chip(family, name, self.exclude):
                return family
        return None


def _chip(family: Family, name: str, exclude: re.Pattern[str]) -> str | None:
    if exclude.search(name):
        return None
    for chip in family.chips:
        if re.match(rf"{re.escape(chip)}[A-Z]*(?![0-9A-Za-z])", name):
            return chip
    return None


# (table, family) -> (the pci.ids the members came from, the members)
_member_cache: dict[tuple[Table, str], tuple[pciids.PciIds, tuple[Member, ...]]] = {}


def _members(table: Table, family: Family, db: pciids.PciIds) -> tuple[Member, ...]:
    cached = _member_cache.get((table, family.name))
    if cached is not None and cached[0] is db:
        return cached[1]
    found = [
        Member(vendor, device, name, chip)
        for (vendor, device), name in db.devices.items()
        if vendor == family.vendor and (chip := _chip(family, name, table.exclude)) is not None
    ]
    members = tuple(sorted(found, key=lambda m: (m.vendor, m.device)))
    _member_cache[(table, family.name)] = (db, members)
    return members


def parse_table(text: str, source: str = "gpu-families.yaml") -> Table:
    """Validate the table; a bad entry raises :class:`FamilyTableError`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FamilyTableError(f"{source}: not YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("families"), list):
        raise FamilyTableError(f"{source}: families: expected a list")
    try:
        exclude = re.compile(str(data.get("exclude") or "(?!)"))
    except re.error as exc:
        raise FamilyTableError(f"{source}: exclude: not a regular expression: {exc}") from exc
    families: list[Family] = []
    for index, raw in enumerate(data["families"]):
        where = f"{source}: families[{index}]"
        if not isinstance(raw, dict):
            raise FamilyTableError(f"{where}: expected a mapping")
        unknown = set(raw) - KEYS
        if unknown:
            raise FamilyTableError(f"{where}: {sorted(unknown)[0]}: unknown key")
        name, vendor, chips = raw.get("name"), str(raw.get("vendor", "")).lower(), raw.get("chips")
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
            raise FamilyTableError(f"{where}: name: lowercase letters, digits and '-'")
        if not re.fullmatch(r"[0-9a-f]{4}", vendor):
            raise FamilyTableError(f"{where} ({name}): vendor: expected 4 hex digits")
        if not isinstance(chips, list) or not chips or not all(isinstance(c, str) for c in chips):
            raise FamilyTableError(f"{where} ({name}): chips: expected a list of chip names")
        cc = raw.get("compute_capability")
        if cc is not None and not _CC.match(str(cc)):
            raise FamilyTableError(f"{where} ({name}): compute_capability: expected like '8.6'")
        cited = raw.get("source")
        if not isinstance(cited, str) or not cited:
            raise FamilyTableError(f"{where} ({name}): source: required")
        if any(f.name == name for f in families):
            raise FamilyTableError(f"{where}: name: {name!r} is given twice")
        families.append(
            Family(
                name,
                vendor,
                str(raw.get("architecture") or ""),
                tuple(chips),
                str(cc) if cc is not None else None,
                cited,
            )
        )
    return Table(tuple(families), exclude)


_loaded: dict[Path, tuple[tuple[int, int], Table]] = {}


def load(path: Path = TABLE) -> Table:
    """The family table at ``path`` (this checkout's by default), read again when the file
    changed (``profile reload`` after an edit)."""
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _loaded.get(path)
    if cached is None or cached[0] != stamp:
        cached = (stamp, parse_table(path.read_text(encoding="utf-8"), str(path)))
        _loaded[path] = cached
    return cached[1]


def table_for(profile_file: str) -> Table:
    """The family table a profile file's rules use: ``gpu-families.yaml`` beside it (a
    profile folder of your own may carry its own), else the shipped one."""
    beside = Path(profile_file).parent / TABLE.name
    return load(beside if beside.is_file() else TABLE)
