"""Hardware dumps that users paste, read into one :class:`~provisioner.discovery.model.Inventory`.

``parse_dump(text)`` detects the format (:mod:`.detect`) and runs its parser. Parsers are
pure and never raise: what they cannot read is listed in ``inventory.problems``. A dump in
no known format gives ``format=None`` and a problem naming the formats we know.

One module per tool family: :mod:`.lspci`, :mod:`.lshw`, :mod:`.dmidecode`,
:mod:`.cpuinfo`, :mod:`.nvidia`, :mod:`.runtimes` (sycl-ls, rocminfo, clinfo), :mod:`.inxi`,
:mod:`.agent`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from provisioner.discovery.dumps import (
    agent,
    cpuinfo,
    dmidecode,
    inxi,
    lshw,
    lspci,
    nvidia,
    runtimes,
)
from provisioner.discovery.dumps.clean import prepare, strip_ansi
from provisioner.discovery.dumps.detect import FORMATS, detect_format
from provisioner.discovery.model import Inventory

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "DumpResult", "detect_format", "parse_as", "parse_dump"]


@dataclass(frozen=True)
class DumpResult:
    format: str | None  # one of FORMATS, or None when not recognised
    inventory: Inventory


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
    """Detect the format of ``text`` and parse it. Never raises."""
    try:
        fmt = detect_format(text)
    except Exception as exc:
        log.debug("format detection failed", exc_info=True)
        fmt = None
        problem = f"format detection failed: {exc!r}"
    else:
        problem = ""
    if fmt is None:
        known = ", ".join(FORMATS)
        problem = problem or "unknown format"
        return DumpResult(
            None, Inventory(partial=True, problems=[f"{problem}; known formats: {known}"])
        )
    return DumpResult(fmt, parse_as(fmt, text))
