"""Name the accelerators in an inventory from the data table ``hwprofiles/accelerators.yaml``.

A PCI device counts when its ``vendor:device`` (and revision, where the table tells
generations apart by revision) is in the table. A device known only by name (plain
``lspci``, ``lshw``, ``nvidia-smi -L``, ``sycl-ls`` ...) counts when every id pci.ids gives
for that name is in the table under one slug; an ambiguous name is never resolved by a
guess. Devices not in the table (iGPUs, BMC VGA such as ASPEED or Matrox, virtio GPUs) are
not accelerators. Names come from pci.ids, never from the table.

Beside the cards the table names, every member of a GPU family
(``hwprofiles/gpu-families.yaml``: every NVIDIA GPU from Pascal on, every Intel Arc) is an
accelerator, its slug the family's name (``nvidia-ampere``). A name whose candidates fall
under several slugs of one family counts for the family, under an id only the family has.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import yaml

from provisioner.data import ACCELERATOR_TABLE
from provisioner.discovery import families, pciids
from provisioner.discovery.model import Inventory, PciDevice, hex_id
from provisioner.errors import ProvisionerError

log = logging.getLogger(__name__)

DEFAULT_TABLE = ACCELERATOR_TABLE
ENTRY_KEYS = frozenset({"slug", "vendor", "device", "revision", "family", "in_pci_ids", "source"})


class AcceleratorTableError(ProvisionerError):
    """hwprofiles/accelerators.yaml is malformed: names the entry, the key and why."""


@dataclass(frozen=True)
class Entry:
    slug: str
    vendor: str
    device: str
    revision: str | None
    family: str | None
    in_pci_ids: bool
    source: str


@dataclass(frozen=True)
class Accelerator:
    slug: str
    vendor: str
    device: str
    name: str  # from pci.ids; the dump's own name when pci.ids does not know the id
    count: int
    family: str | None = None
    # False when the dump printed only a name: the slug is certain, but pci.ids may give
    # that name to several ids (all under this slug) and ``device`` is the lowest of them.
    ids_from_dump: bool = True


class Table:
    """The accelerator table, indexed by ``(vendor, device)``."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self._by_ids: dict[tuple[str, str], list[Entry]] = {}
        for entry in entries:
            self._by_ids.setdefault((entry.vendor, entry.device), []).append(entry)

    def lookup(self, vendor: str, device: str, revision: str | None = None) -> Entry | None:
        """The entry for these ids; with per-revision entries the revision must match.

        Without a revision, per-revision entries of one slug still give that slug (the
        family stays unknown).
        """
        found = self._by_ids.get((vendor, device), [])
        if not found:
            return None
        exact = [e for e in found if e.revision == revision and revision is not None]
        exact = exact or [e for e in found if e.revision is None]
        if exact and (revision is not None or len(found) == 1):
            return exact[0]
        if revision is None and len({e.slug for e in found}) == 1:
            first = found[0]
            return Entry(first.slug, vendor, device, None, None, first.in_pci_ids, first.source)
        return None

    def slugs(self) -> set[str]:
        return {e.slug for e in self.entries}


def parse_table(text: str, source: str = "accelerators.yaml") -> Table:
    """Validate and index the table; a bad entry raises AcceleratorTableError."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise AcceleratorTableError(f"{source}: not YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("accelerators"), list):
        raise AcceleratorTableError(f"{source}: accelerators: expected a list")
    entries: list[Entry] = []
    for index, raw in enumerate(data["accelerators"]):
        where = f"{source}: accelerators[{index}]"
        if not isinstance(raw, dict):
            raise AcceleratorTableError(f"{where}: expected a mapping")
        unknown = set(raw) - ENTRY_KEYS
        if unknown:
            raise AcceleratorTableError(f"{where}: {sorted(unknown)[0]}: unknown key")
        vendor, device = hex_id(str(raw.get("vendor", ""))), hex_id(str(raw.get("device", "")))
        if vendor is None or device is None:
            raise AcceleratorTableError(f"{where}: vendor/device: expected 4 hex digits")
        revision = raw.get("revision")
        rev = hex_id(str(revision), 2) if revision is not None else None
        if revision is not None and rev is None:
            raise AcceleratorTableError(f"{where}: revision: expected 2 hex digits")
        slug, cited = raw.get("slug"), raw.get("source")
        if not isinstance(slug, str) or not slug:
            raise AcceleratorTableError(f"{where}: slug: required")
        if not isinstance(cited, str) or not cited:
            raise AcceleratorTableError(f"{where}: source: required (cite pci.ids or a driver)")
        family = raw.get("family")
        entries.append(
            Entry(
                slug=slug,
                vendor=vendor,
                device=device,
                revision=rev,
                family=str(family) if family is not None else None,
                in_pci_ids=bool(raw.get("in_pci_ids", True)),
                source=cited,
            )
        )
    return Table(entries)


_default: Table | None = None


def default_table() -> Table:
    """hwprofiles/accelerators.yaml of this checkout, with every GPU family member, read once."""
    global _default
    if _default is None:
        table = parse_table(DEFAULT_TABLE.read_text(encoding="utf-8"), str(DEFAULT_TABLE))
        _default = with_families(table, families.load(), pciids.default())
    return _default


def with_families(table: Table, fams: families.Table, db: pciids.PciIds) -> Table:
    """``table`` plus an entry for each family member it does not name (slug: the family)."""
    entries = list(table.entries)
    named = {(e.vendor, e.device) for e in entries}
    for family in fams.families:
        for member in fams.members(family, db):
            if (member.vendor, member.device) not in named:
                source = f"gpu-families.yaml {family.name}: pci.ids {member.name!r}"
                entries.append(
                    Entry(family.name, member.vendor, member.device, None, None, True, source)
                )
    return Table(entries)


def resolve(dev: PciDevice, table: Table, db: pciids.PciIds) -> tuple[Entry | None, list[str]]:
    """The table entry for one device (by ids, else by name), and any problem found."""
    if dev.vendor and dev.device:
        return table.lookup(dev.vendor, dev.device, dev.revision), []
    if not dev.device_name:
        return None, []
    vendors = [dev.vendor] if dev.vendor else None
    if vendors is None and dev.vendor_name:
        vendors = db.vendor_ids(dev.vendor_name) or None
    name = dev.device_name
    candidates, _ = name_candidates(dev, db)
    entries = [table.lookup(v, d, dev.revision) for v, d in candidates]
    known = [e for e in entries if e is not None]
    if not known:
        return None, []
    slugs = sorted({e.slug for e in known})
    if len(known) == len(entries) and len(slugs) == 1:
        return known[0], []
    family = _one_family(candidates, db)
    if family is not None and len(known) == len(entries):
        only = [e for e in known if e.slug == family]
        if only:  # counted for the family profile, not for a card it might not be
            return only[0], []
    listed = ", ".join(f"{v}:{d}" for v, d in candidates)
    return None, [f"{name!r} is ambiguous in pci.ids ({listed}: {', '.join(slugs)}); not counted"]


def name_candidates(dev: PciDevice, db: pciids.PciIds) -> tuple[list[tuple[str, str]], str]:
    """The ids pci.ids gives a device known by name, and how they were found (pciids'
    tiers, then the chip its name starts with: 'TU116M [GeForce GTX 1660 Mobile]' is one
    of the TU116 parts even if pci.ids spells it otherwise)."""
    name = dev.device_name or ""
    vendors = [dev.vendor] if dev.vendor else None
    if vendors is None and dev.vendor_name:
        vendors = db.vendor_ids(dev.vendor_name) or None
    found, how = db.resolve_name(name, vendors, dev.memory_bytes)
    if not found and vendors is None:
        vendor_ids, rest = db.split_vendor(name)
        if vendor_ids:
            name, vendors = rest, vendor_ids
            found, how = db.resolve_name(rest, vendor_ids, dev.memory_bytes)
    if not found:
        found = families.load().chip_members(name, vendors, db)
        how = "chip" if found else ""
    return found, how


def _one_family(candidates: list[tuple[str, str]], db: pciids.PciIds) -> str | None:
    """The GPU family every candidate id belongs to, or None."""
    fams = families.load()
    found = {fam.name if (fam := fams.family_of(v, d, db)) else None for v, d in candidates}
    return found.pop() if len(found) == 1 else None


def accelerators(
    inventory: Inventory, table: Table | None = None, db: pciids.PciIds | None = None
) -> list[Accelerator]:
    """The accelerators in ``inventory``, one row per (slug, ids), sorted by slug."""
    return name_accelerators(inventory, table, db)[0]


def name_accelerators(
    inventory: Inventory, table: Table | None = None, db: pciids.PciIds | None = None
) -> tuple[list[Accelerator], list[str]]:
    """Like :func:`accelerators`, plus the problems met (ambiguous names)."""
    table = table or default_table()
    db = db if db is not None else pciids.default()
    counts: Counter[tuple[str, str, str, str | None, bool]] = Counter()
    names: dict[tuple[str, str, str, str | None, bool], str] = {}
    problems: list[str] = []
    seen: set[str] = set()
    for dev in inventory.pci:
        if dev.address:
            address = _short_address(dev.address)
            if address in seen:
                continue
            seen.add(address)
        entry, found = resolve(dev, table, db)
        problems.extend(found)
        if entry is None:
            continue
        exact = bool(dev.vendor and dev.device)
        key = (entry.slug, entry.vendor, entry.device, entry.family, exact)
        counts[key] += 1
        # a card known by its ids is named by pci.ids; one known by name, by its dump
        known = db.name(entry.vendor, entry.device) if exact else None
        names.setdefault(key, known or dev.device_name or "")
    result = [
        Accelerator(slug, vendor, device, names[key] or f"{vendor}:{device}", count, family, exact)
        for key, count in counts.items()
        for slug, vendor, device, family, exact in [key]
    ]
    result.sort(key=lambda a: (a.slug, a.vendor, a.device))
    return result, problems


def _short_address(address: str) -> str:
    """'00000000:01:00.0' (nvidia-smi) / '0000:01:00.0' / '01:00.0' -> '01:00.0'."""
    domain, sep, rest = address.lower().partition(":")
    if sep and rest.count(":") == 1 and set(domain) <= {"0"}:
        return rest
    return address.lower()


def summary(found: list[Accelerator]) -> dict[str, int]:
    """{slug: total count}: what a profile rule or a test compares."""
    total: Counter[str] = Counter()
    for acc in found:
        total[acc.slug] += acc.count
    return dict(total)
