"""Names <-> ids from the PCI ID database (``pci.ids``) that Debian ships. Pure after load.

The database is the newest (by its ``Version:`` line) of the system's (package ``pci.ids``:
``/usr/share/misc/pci.ids``, or ``pci.ids.gz``) and the copy shipped in
``hwprofiles/pci.ids.gz`` (Debian 12's is from 2023: it names no Ada laptop part, no Hopper,
no Blackwell, no Battlemage). The file lists vendors at
column 0, devices after one tab, subsystems after two, and the class list after ``C``
lines. It is parsed once, on first use, into a :class:`PciIds`; an absent or unreadable
file gives an empty database (every lookup answers "unknown"), never an exception.

Reverse lookup (``ids_for_name``) serves name-only dumps (plain ``lspci``, ``lshw``,
``nvidia-smi``, ``sycl-ls``): an exact match on the device name first, then on the
bracketed marketing name (``GP102GL [Tesla P40]`` -> ``Tesla P40``), then a normalised
comparison (case, ``(R)``/``(TM)``, vendor words such as ``NVIDIA``/``GeForce``/``Intel``,
a trailing ``Graphics``), then, for a name ``nvidia-smi`` cut short (``Tesla V100S-PCI...``),
every name it begins, then every name holding all its words (``NVIDIA H100 80GB HBM3`` ->
the H100 parts: a word pci.ids never uses, such as ``HBM3``, is left out). A name that
states a memory size (``[Tesla V100 PCIe 32GB]``) is kept only if the card's memory, when
the dump gives it, is that size. An ambiguous name answers every candidate, never a guess:
:mod:`provisioner.discovery.accelerators` counts it only when they all fall in one place.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from provisioner.data import HWPROFILES

log = logging.getLogger(__name__)

DEFAULT_PATHS = (
    Path("/usr/share/misc/pci.ids"),
    Path("/usr/share/misc/pci.ids.gz"),
    Path("/usr/share/hwdata/pci.ids"),
    HWPROFILES / "pci.ids.gz",
)
_VERSION = re.compile(rb"#\s*Version:\s*(\S+)")

_BRACKET = re.compile(r"\[([^\[\]]+)\]\s*$")
CUT = re.compile(r"\s*(?:\.\.\.|\u2026)\s*$")  # nvidia-smi's column cut: "Tesla V100S-PCI..."
_GB = re.compile(r"(\d+)\s?GB\b", re.IGNORECASE)
_MODEL_WORD = re.compile(r"\d")  # "3060", "a100", "v100s": a model number
# The product lines a model number belongs to: kept with it when the other words of a
# name (a driver's "Laptop GPU", "Generation") are not how pci.ids says it
SERIES = frozenset(
    {"rtx", "gtx", "gt", "mx", "tesla", "quadro", "titan", "arc", "pro", "ti", "super"}
)


def _stated_gb(name: str) -> int | None:
    """'GV100GL [Tesla V100 PCIe 32GB]' -> 32; no size in the name -> None."""
    match = _GB.search(name)
    return int(match.group(1)) if match else None


_MARKS = re.compile(r"\((?:r|tm|c)\)|®|™", re.IGNORECASE)
_VENDOR_WORDS = frozenset({"nvidia", "geforce", "intel", "amd", "ati", "corporation"})


def normalise(name: str) -> str:
    """Lower case, no (R)/(TM), no vendor words, no trailing 'graphics'; words joined by ' '."""
    words = re.sub(r"[^0-9a-z]+", " ", _MARKS.sub(" ", name).lower()).split()
    while words and words[0] in _VENDOR_WORDS:
        words.pop(0)
    if len(words) > 1 and words[-1] == "graphics":
        words.pop()
    return " ".join(words)


def bracketed(name: str) -> str | None:
    """The marketing name in a trailing ``[...]``: 'GP102GL [Tesla P40]' -> 'Tesla P40'."""
    match = _BRACKET.search(name)
    return match.group(1).strip() if match else None


Ids = tuple[str, str]


@dataclass
class PciIds:
    """The parsed database. Ids are 4 lowercase hex digits; classes are 2 hex digits each."""

    version: str | None = None
    vendors: dict[str, str] = field(default_factory=dict)
    devices: dict[Ids, str] = field(default_factory=dict)
    subsystems: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    classes: dict[str, str] = field(default_factory=dict)  # "03" / "0302" / "030200" -> name
    _by_name: dict[str, list[Ids]] = field(default_factory=dict)
    _by_bracket: dict[str, list[Ids]] = field(default_factory=dict)
    _by_norm: dict[str, list[Ids]] = field(default_factory=dict)
    _vendor_by_name: dict[str, list[str]] = field(default_factory=dict)
    _class_by_name: dict[str, str] = field(default_factory=dict)
    _vocabulary: frozenset[str] | None = None

    def __bool__(self) -> bool:
        return bool(self.vendors)

    def vendor_name(self, vendor: str | None) -> str | None:
        return self.vendors.get((vendor or "").lower())

    def name(self, vendor: str | None, device: str | None) -> str | None:
        """The device name pci.ids gives for ``vendor:device``, or None."""
        return self.devices.get(((vendor or "").lower(), (device or "").lower()))

    def subsystem_name(
        self, vendor: str, device: str, sub_vendor: str, sub_device: str
    ) -> str | None:
        key = (vendor.lower(), device.lower(), sub_vendor.lower(), sub_device.lower())
        return self.subsystems.get(key)

    def class_name(self, code: str | None) -> str | None:
        return self.classes.get((code or "").lower())

    def class_code(self, name: str) -> str | None:
        """'3D controller' -> '0302' (the subclass code; None if unknown or ambiguous)."""
        return self._class_by_name.get(name.strip().lower())

    def vendor_ids(self, name: str) -> list[str]:
        """Every vendor id whose pci.ids name is ``name`` ('Red Hat, Inc.' -> 1af4, 1b36)."""
        return list(self._vendor_by_name.get(name.strip().lower(), []))

    def split_vendor(self, text: str) -> tuple[list[str], str]:
        """'NVIDIA Corporation GP108 [GeForce GT 1030]' -> (['10de'], 'GP108 [GeForce GT 1030]').

        The longest pci.ids vendor name that starts ``text`` wins; no match gives ([], text).
        """
        lowered = text.lower()
        best = ""
        for name in self._vendor_by_name:
            if len(name) > len(best) and lowered.startswith(name):
                rest = lowered[len(name) :]
                if not rest or rest[0] == " ":
                    best = name
        if not best:
            return [], text
        return list(self._vendor_by_name[best]), text[len(best) :].strip()

    def ids_for_name(
        self, name: str, vendors: list[str] | None = None, memory_bytes: int | None = None
    ) -> list[Ids]:
        """Every ``(vendor, device)`` pci.ids names ``name`` (see the module's docstring)."""
        return self.resolve_name(name, vendors, memory_bytes)[0]

    def resolve_name(
        self, name: str, vendors: list[str] | None = None, memory_bytes: int | None = None
    ) -> tuple[list[Ids], str]:
        """(the candidates, how they were found: exact, bracketed, normalised, cut, words)."""
        name = name.strip()
        if not name:
            return [], ""
        allowed = {v.lower() for v in vendors} if vendors else None

        def keep(found: Iterable[Ids]) -> list[Ids]:
            ids = sorted({i for i in found if allowed is None or i[0] in allowed})
            return self._by_memory(ids, memory_bytes)

        exact = keep(self._by_name.get(name.lower(), []))
        if exact:
            return exact, "exact"
        inner = bracketed(name) or name
        marketing = keep(self._by_bracket.get(inner.lower(), []))
        if marketing:
            return marketing, "bracketed"
        cut = CUT.search(inner)
        norm = normalise(inner[: cut.start()] if cut else inner)
        if not norm:
            return [], ""
        same = keep(self._by_norm.get(norm, [])) if not cut else []
        if same:
            return same, "normalised"
        if cut:
            # "GeForce GTX 108..." begins "GeForce GTX 1080", "... 1080 Ti": a prefix,
            # whose last word may itself be cut
            begun = keep(
                i for key, found in self._by_norm.items() if key.startswith(norm) for i in found
            )
            return begun, "cut" if begun else ""
        words = [w for w in norm.split() if w in self._words]
        if not words or not any(any(c.isdigit() for c in w) for w in words):
            return [], ""  # no model number left: too little to go on
        for wanted in (set(words), {w for w in words if _MODEL_WORD.search(w) or w in SERIES}):
            held = keep(
                i
                for key, found in self._by_norm.items()
                if wanted <= set(key.split())
                for i in found
            )
            if held:
                return held, "words"
        return [], ""

    def _by_memory(self, ids: list[Ids], memory_bytes: int | None) -> list[Ids]:
        """Drop the names stating another memory size than the card's (±15 %); when some
        state the card's size, keep only those."""
        if memory_bytes is None or len(ids) < 2:
            return ids
        gib = memory_bytes / 1024**3
        stated = {i: _stated_gb(self.devices.get(i, "")) for i in ids}
        fits = [i for i, s in stated.items() if s is not None and 0.85 * s <= gib <= 1.05 * s]
        if fits:
            return fits
        unsized = [i for i, s in stated.items() if s is None]
        return unsized or ids

    @property
    def _words(self) -> frozenset[str]:
        """Every word of a normalised device name (what a name's words are checked against)."""
        if self._vocabulary is None:
            self._vocabulary = frozenset(w for key in self._by_norm for w in key.split())
        return self._vocabulary

    def _index(self) -> None:
        by_name: dict[str, list[Ids]] = defaultdict(list)
        by_bracket: dict[str, list[Ids]] = defaultdict(list)
        by_norm: dict[str, list[Ids]] = defaultdict(list)
        for ids, name in self.devices.items():
            by_name[name.lower()].append(ids)
            inner = bracketed(name)
            if inner:
                by_bracket[inner.lower()].append(ids)
            for variant in {normalise(name), normalise(inner or name)}:
                if variant:
                    by_norm[variant].append(ids)
        vendor_by_name: dict[str, list[str]] = defaultdict(list)
        for vid, vname in self.vendors.items():
            vendor_by_name[vname.lower()].append(vid)
        class_by_name: dict[str, str] = {}
        seen_twice: set[str] = set()
        for code, cname in self.classes.items():
            key = cname.lower()
            if len(code) != 4:
                continue
            if key in class_by_name:
                seen_twice.add(key)
            class_by_name[key] = code
        for key in seen_twice:
            class_by_name.pop(key, None)
        self._by_name, self._by_bracket, self._by_norm = by_name, by_bracket, by_norm
        self._vendor_by_name, self._class_by_name = vendor_by_name, class_by_name


_HEX4 = re.compile(r"[0-9a-f]{4}")


def parse(text: str) -> PciIds:
    """Parse pci.ids text; lines it cannot read are skipped."""
    db = PciIds()
    vendor: str | None = None
    device: str | None = None
    cls: str | None = None
    sub: str | None = None
    for line in text.splitlines():
        if line.startswith("#"):
            match = re.match(r"#\s*Version:\s*(\S+)", line)
            if match and db.version is None:
                db.version = match.group(1)
            continue
        if not line.strip():
            continue
        if line.startswith("C "):
            vendor = device = None
            cls, sub = line[2:4].lower(), None
            db.classes[cls] = line[4:].strip()
            continue
        if not line.startswith("\t"):
            cls = device = None
            head = line[:4].lower()
            # Lines after the class list ('C ...') belong to it; vendor lines are 4 hex.
            vendor = head if _HEX4.fullmatch(head) else None
            if vendor:
                db.vendors[vendor] = line[4:].strip()
            continue
        depth = len(line) - len(line.lstrip("\t"))
        body = line.strip()
        if cls is not None:
            if depth == 1:
                sub = body[:2].lower()
                db.classes[cls + sub] = body[2:].strip()
            elif depth == 2 and sub is not None:
                db.classes[cls + sub + body[:2].lower()] = body[2:].strip()
            continue
        if vendor is None:
            continue
        if depth == 1 and _HEX4.fullmatch(body[:4].lower()):
            device = body[:4].lower()
            db.devices[(vendor, device)] = body[4:].strip()
        elif depth == 2 and device is not None:
            parts = body.split(None, 2)
            if len(parts) == 3:
                key = (vendor, device, parts[0].lower(), parts[1].lower())
                db.subsystems[key] = parts[2]
    db._index()
    return db


def version_of(path: Path) -> str | None:
    """The ``# Version: 2026.08.22`` of a pci.ids file (plain or .gz), read from its head."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            head = handle.read(4096)
    except (OSError, EOFError):
        return None
    match = _VERSION.search(head)
    return match.group(1).decode("ascii", "replace") if match else None


def newest(paths: tuple[Path, ...] = DEFAULT_PATHS) -> tuple[Path, ...]:
    """``paths`` that exist, the newest version first (an unversioned file last)."""
    found = [(version_of(p) or "", i, p) for i, p in enumerate(paths) if p.is_file()]
    found.sort(key=lambda t: (t[0], -t[1]), reverse=True)
    return tuple(p for _, _, p in found)


def load(path: Path | None = None) -> PciIds:
    """Read pci.ids (plain or .gz) from ``path``, else the newest of DEFAULT_PATHS."""
    candidates = (path,) if path is not None else newest()
    for candidate in candidates:
        try:
            raw = candidate.read_bytes()
        except OSError:
            continue
        if candidate.suffix == ".gz" or raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as exc:
                log.warning("pci.ids %s: not readable gzip: %s", candidate, exc)
                continue
        return parse(raw.decode("utf-8", errors="replace"))
    log.warning("no pci.ids found (install Debian package 'pci.ids'): names are unknown")
    return PciIds()


@lru_cache(maxsize=1)
def default() -> PciIds:
    """The system's pci.ids, parsed once per process."""
    return load()
