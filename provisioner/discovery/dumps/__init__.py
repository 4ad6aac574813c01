"""Hardware dumps that users paste, read into one :class:`~provisioner.discovery.model.Inventory`.

``parse_dump(text)`` reads any paste: a whole document (the agent's report, XML, JSON) is
detected (:mod:`.detect`) and parsed as one; any other text is cut into the runs of lines
one tool printed (:mod:`.sections`: after mail quoting and HTML escapes are undone), each
run is detected and parsed on its own, and the views are merged into one inventory
(:mod:`.merge`: a device shown by two tools counts once). Parsers are pure and never raise:
what they cannot read is listed in ``inventory.problems``, and so is every run of lines
that no tool printed, by line number. A text with no known tool's output gives
``format=None`` and a problem naming the formats we know.

One module per tool family: :mod:`.lspci`, :mod:`.lshw`, :mod:`.dmidecode`,
:mod:`.cpuinfo`, :mod:`.nvidia`, :mod:`.runtimes` (sycl-ls, rocminfo, clinfo, xpu-smi),
:mod:`.inxi`, :mod:`.agent`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from provisioner.discovery import pciids
from provisioner.discovery.dumps import (
    agent,
    cpuinfo,
    dmidecode,
    inxi,
    lshw,
    lspci,
    nvidia,
    runtimes,
    sections,
)
from provisioner.discovery.dumps.clean import prepare, strip_ansi
from provisioner.discovery.dumps.detect import FORMATS, detect_format
from provisioner.discovery.dumps.merge import merge
from provisioner.discovery.model import Inventory

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "DumpResult", "SectionRead", "detect_format", "parse_as", "parse_dump"]

# Formats that are one document: never cut into sections.
WHOLE = frozenset({"agent", "nvidia-smi-q-x", "lshw-xml", "lshw-json"})


@dataclass(frozen=True)
class SectionRead:
    """One run of lines that one tool printed, and what its parser made of it."""

    format: str
    first: int  # 1-based lines of the text as given
    last: int
    pci_devices: int
    problems: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "format": self.format,
            "lines": [self.first, self.last],
            "pci_devices": self.pci_devices,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class DumpResult:
    # one of FORMATS; several joined by '+' in text order ("lspci-plain+nvidia-smi-table")
    # for a mixed paste; None when no known tool's output was found
    format: str | None
    inventory: Inventory
    sections: tuple[SectionRead, ...] = ()
    skipped: tuple[str, ...] = ()  # "lines 3-9 skipped: not a known tool's output ('pip ...')"
    carriers: tuple[str, ...] = ()  # what was undone first: "mail quoting '>'", "HTML escapes"


LineParser = Callable[[list[str], list[str]], Inventory]
TextParser = Callable[[str, list[str]], Inventory]

LINE_PARSERS: dict[str, LineParser] = {
    "lspci-nn": lspci.parse_lspci,
    "lspci-nnk": lspci.parse_lspci,
    "lspci-vvnn": lspci.parse_lspci,
    "lspci-plain": lspci.parse_lspci,
    "lspci-vmmnn": lspci.parse_vmm,
    "lshw-text": lshw.parse_text,
    "dmidecode": dmidecode.parse,
    "proc-cpuinfo": cpuinfo.parse,
    "nvidia-smi-q": nvidia.parse_q,
    "nvidia-smi-L": nvidia.parse_list,
    "nvidia-smi-table": nvidia.parse_table,
    "sycl-ls": runtimes.parse_sycl,
    "rocminfo": runtimes.parse_rocminfo,
    "clinfo": runtimes.parse_clinfo,
    "xpu-smi": runtimes.parse_xpu_smi,
    "inxi": inxi.parse,
}
TEXT_PARSERS: dict[str, TextParser] = {
    "lshw-json": lshw.parse_json,
    "lshw-xml": lshw.parse_xml_dump,
    "nvidia-smi-q-x": nvidia.parse_q_x,
}


def parse_as(fmt: str, text: str) -> Inventory:
    """Parse ``text`` as ``fmt`` (one of FORMATS). Never raises."""
    try:
        if fmt == "agent":
            return agent.parse(text)
        if fmt in TEXT_PARSERS:
            return TEXT_PARSERS[fmt](text, [])
        lines, notes = prepare(strip_ansi(text))
        return LINE_PARSERS[fmt](lines, notes)
    except Exception as exc:  # a parser bug must not take the caller down with it
        log.debug("parser %s failed", fmt, exc_info=True)
        return Inventory(partial=True, problems=[f"{fmt} parser failed: {exc!r}"])


def parse_dump(text: str) -> DumpResult:
    """Read any paste (see the module's docstring). Never raises."""
    try:
        return _parse_dump(text)
    except Exception as exc:  # a bug must not take the caller down with it
        log.debug("reading a dump failed", exc_info=True)
        problem = f"reading the dump failed: {exc!r}"
        return DumpResult(None, Inventory(partial=True, problems=[problem]))


def _parse_dump(text: str) -> DumpResult:
    whole = detect_format(text)
    if whole in WHOLE:
        inventory = parse_as(whole, text)
        return DumpResult(
            whole, inventory, (SectionRead(whole, 1, _count_lines(text), len(inventory.pci)),)
        )
    cut = sections.split(text)
    if cut.carriers:  # a quoted or escaped document: look again at what it carried
        carried = "\n".join(sections.carried_lines(text)[0])
        inner = detect_format(carried)
        if inner in WHOLE:
            inventory = parse_as(inner, carried)
            read = SectionRead(inner, 1, _count_lines(text), len(inventory.pci))
            return DumpResult(inner, inventory, (read,), (), cut.carriers)
    skipped = tuple(s.describe() for s in cut.skipped)
    if not cut.sections:
        known = ", ".join(FORMATS)
        problem = f"unknown format: no known tool's output found; known formats: {known}"
        return DumpResult(
            None, Inventory(partial=True, problems=[problem]), (), skipped, cut.carriers
        )
    parts: list[Inventory] = []
    reads: list[SectionRead] = []
    for section in cut.sections:
        fmt = _format_of(section)
        inventory = parse_as(fmt, section.text)
        if len(cut.sections) > 1:
            where = f"lines {section.first}-{section.last} ({fmt})"
            inventory = replace(inventory, problems=[f"{where}: {p}" for p in inventory.problems])
        parts.append(inventory)
        reads.append(
            SectionRead(
                fmt, section.first, section.last, len(inventory.pci), tuple(inventory.problems)
            )
        )
    merged = merge(parts, pciids.default())
    if len(cut.sections) > 1 or skipped or cut.notes:
        merged = replace(merged, problems=[*cut.notes, *merged.problems, *skipped])
    names = list(dict.fromkeys(r.format for r in reads))
    return DumpResult("+".join(names), merged, tuple(reads), skipped, cut.carriers)


def _format_of(section: sections.Section) -> str:
    """The section's format: as detected, when that is one its family prints."""
    allowed = sections.FAMILIES[section.family]
    try:
        fmt = detect_format(section.text)
    except Exception:  # detection is best effort here: the family decides
        fmt = None
    return fmt if fmt in allowed else allowed[0]


def _count_lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") else 1)
